"""Upstream socket pools and pins, against the simulator's real Responses WebSocket mode."""
from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from proxy.call import ModelRequest
from proxy.config.loader import parse_policy
from proxy.upstream.http_pool import UpstreamPools
from proxy.upstream.targets import build_target
from proxy.upstream.ws_pool import ErrorResponse, SocketPin, SocketPool, SocketPools
from tests.support import free_port, simulator

POLICY = """\
version: 1
auth: open
deployments:
  - {{name: ws, provider: openai, model: sim-spark, base_url: "{url}/v1", websocket: true, websocket_max_connections: 2}}
"""


@pytest.fixture(scope="module")
def sim():
    with simulator("wafer", ttft_ms=2, tokens_per_s=4000) as server:
        yield server


@pytest.fixture
def ws_url(sim) -> str:
    httpx.post(sim.url + "/sim/reset").raise_for_status()
    return "ws" + sim.url[4:] + "/v1/responses"


def run(coro):
    return asyncio.run(coro)


def test_a_released_socket_is_reused_and_the_cap_holds(sim, ws_url):
    before = sim.app.websocket.connections

    async def scenario():
        pool = SocketPool(ws_url, {}, limit=1, connect_s=1)
        first = await pool.acquire()
        assert first is not None and await pool.acquire() is None  # the cap: one open socket
        pool.release(first, reusable=True)
        again = await pool.acquire()
        assert again is first and pool.stats.connects == 1
        pool.release(again, reusable=False)  # a turn cut short: the socket closes
        assert pool.open == 0 and pool.idle == []
        pool.close()
    run(scenario())
    assert sim.app.websocket.connections == before + 1


def test_an_unreachable_provider_is_backed_off_not_hammered():
    async def scenario():
        pool = SocketPool(f"ws://127.0.0.1:{free_port()}/v1/responses", {}, limit=4, connect_s=0.3)
        assert await pool.acquire() is None
        assert await pool.acquire() is None  # still backing off: no second connect attempt
        return pool.stats.connect_failures, pool.open
    assert run(scenario()) == (1, 0)


def turn(body: dict, rid: str) -> ModelRequest:
    return ModelRequest.from_body("responses", None, {"model": "ws", "stream": True, **body}, rid, size=100)


def test_a_pinned_conversation_continues_with_only_the_new_items(sim, ws_url):
    before = sim.app.websocket.connections

    async def scenario():
        pools = UpstreamPools()
        target = build_target(parse_policy(POLICY.format(url=sim.url)).deployments["ws"], pools, SocketPools())
        pin = SocketPin()
        first = await target.send(turn({"input": "hello"}, "r1"), pin)
        events = [line for chunk in [c async for c in first.iter_body()] for line in chunk.split(b"\n") if line.startswith(b"data:")]
        response_id = orjson.loads(events[-1][5:])["response"]["id"]
        assert pin.response_id == response_id and not pin.busy  # the socket stays pinned to the conversation
        pin.previous, pin.delta = response_id, [{"type": "message", "role": "user", "content": "more"}]
        second = await target.send(turn({"input": [{"role": "user", "content": "hello"}] + pin.delta}, "r2"), pin)
        await second.read()
        stats = target.pool.stats
        target.pool.close()
        pools.close()
        return stats
    stats = run(scenario())
    assert (stats.turns, stats.continued, stats.continue_misses) == (2, 1, 0)
    assert sim.app.websocket.continued == 1 and sim.app.websocket.connections == before + 1


def test_a_pin_of_another_pool_goes_back_to_its_own(ws_url):
    async def scenario():
        home, other = SocketPool(ws_url, {}, 2, 1), SocketPool(ws_url, {}, 2, 1)
        pin = SocketPin()
        ws = await home.acquire()
        pin.keep(home, ws, "resp_1")
        assert pin.take(other) is None and home.idle == [ws] and pin.ws is None
        home.close()
    run(scenario())


def test_an_error_event_reads_like_an_http_error_response():
    event = {"type": "error", "status": 429, "error": {"message": "slow down", "type": "rate_limit_error",
                                                       "param": None, "code": "rate_limit_exceeded"},
             "headers": {"Retry-After": "2"}}
    response = ErrorResponse(event)
    assert response.status == 429 and (b"retry-after", b"2") in response.headers
    assert orjson.loads(run(response.read()))["error"]["code"] == "rate_limit_exceeded"
    assert response.abandon() == b""
