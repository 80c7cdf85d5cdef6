"""Upstream socket pools and pins, against the simulator's real Responses WebSocket mode."""
from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from proxy.call import ModelRequest, UpstreamClosed, UpstreamTimeout
from proxy.config.loader import parse_policy
from proxy.upstream.http_pool import UpstreamPools
from proxy.upstream.scan import event_type
from proxy.upstream.targets import build_target
from proxy.upstream.ws_memory import Memory, conversation
from proxy.upstream.ws_pool import (
    ErrorResponse,
    SocketPin,
    SocketPool,
    SocketPools,
    _unchained,
)
from tests.support import free_port, simulator
from tests.unit.upstream.ws_peer import Peer, frame, read_frame

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


# --- a turn over the lean protocol, against a peer that writes exactly what a test asks for ---------

PEER_POLICY = """\
version: 1
auth: open
deployments:
  - {{name: ws, provider: openai, model: m, base_url: "{url}/v1", websocket: true,
      timeouts: {{connect_s: 1, first_byte_s: 2, idle_s: 2}}}}
"""
CREATED = b'{"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}'
DELTAS = [b'{"type":"response.output_text.delta","delta":"tok%d "}' % i for i in range(1, 4)]
COMPLETED = b'{"type":"response.completed","response":{"id":"resp_1","status":"completed","output":[]}}'


def peer_turn(*writes: bytes, then: str = "wait"):
    """A script: take the turn's response.create, write each of ``writes`` as its own segment, then
    wait for the client to close, or ``then="die"`` (drop the TCP connection)."""
    async def script(reader, writer):
        opcode, payload = await read_frame(reader)
        assert opcode == 0x1 and payload.startswith(b'{"type":"response.create"')
        for chunk in writes:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.03)
        if then == "die":
            writer.transport.abort()
        else:
            await reader.read()
    return script


async def peer_target(peer: Peer):
    base = peer.url.replace("ws://", "http://").removesuffix("/v1/responses")
    return build_target(parse_policy(PEER_POLICY.format(url=base)).deployments["ws"], UpstreamPools(), SocketPools())


def test_events_that_arrive_together_are_relayed_as_one_chunk():
    burst = b"".join(frame(e) for e in [CREATED, *DELTAS, COMPLETED])

    async def main():
        async with Peer(peer_turn(burst)) as peer:
            target = await peer_target(peer)
            response = await target.send(turn({"input": "x"}, "r1"))
            chunks = [c async for c in response.iter_body()]
            return chunks, target.pool
    chunks, pool = asyncio.run(main())
    assert len(chunks) == 1, "one read, one hand-over (one write to the client)"
    assert chunks[0] == b"".join(b"event: %s\ndata: %s\n\n" % (event_type(e), e) for e in [CREATED, *DELTAS, COMPLETED])
    assert pool.idle and pool.open == 1  # a whole turn: the socket is reusable


@pytest.mark.parametrize("end", ["close", "die-mid-frame"])
def test_a_socket_that_ends_mid_turn_surfaces_the_error_and_frees_its_slot(end):
    tail = frame((1011).to_bytes(2, "big"), opcode=0x8) if end == "close" else frame(b'{"type":"response.output_text')[:9]
    script = peer_turn(frame(CREATED) + frame(DELTAS[0]), frame(DELTAS[1]) + tail, then="die")

    async def main():
        async with Peer(script) as peer:
            target = await peer_target(peer)
            response = await target.send(turn({"input": "x"}, "r1"))
            chunks = []
            with pytest.raises(UpstreamClosed):
                async for chunk in response.iter_body():
                    chunks.append(chunk)
            return chunks, target.pool
    chunks, pool = asyncio.run(asyncio.wait_for(main(), 10))
    assert b"tok1" in chunks[0] and b"tok2" in chunks[-1], "everything that arrived whole was relayed first"
    assert (pool.open, pool.idle, pool.stats.drops) == (0, [], 1)


def test_abandon_returns_the_events_not_yet_relayed_and_closes_the_socket():
    async def main():
        async with Peer(peer_turn(b"".join(frame(e) for e in [CREATED, *DELTAS]))) as peer:
            target = await peer_target(peer)
            response = await target.send(turn({"input": "x"}, "r1"))
            await asyncio.sleep(0.05)
            rest = response.abandon()
            await asyncio.wait_for(peer.done, 2)  # the provider sees the connection go: it stops generating
            return rest, target.pool
    rest, pool = asyncio.run(main())
    assert rest.count(b"event: response.output_text.delta\n") == 3 and rest.startswith(b"event: response.created\n")
    assert (pool.open, pool.idle) == (0, [])


def test_a_client_socket_gets_the_events_themselves_one_list_per_read():
    async def main():
        async with Peer(peer_turn(frame(CREATED) + frame(DELTAS[0]), b"".join(frame(e) for e in [*DELTAS[1:], COMPLETED]))) as peer:
            target = await peer_target(peer)
            response = await target.send(turn({"input": "x"}, "r1"))
            return [batch async for batch in response.iter_events()], target.pool
    batches, pool = asyncio.run(main())
    assert batches == [[CREATED, DELTAS[0]], [*DELTAS[1:], COMPLETED]]
    assert pool.idle and pool.open == 1


def test_a_socket_silent_past_first_byte_s_is_a_timeout_and_is_closed():
    async def main():
        async with Peer(peer_turn()) as peer:
            base = peer.url.replace("ws://", "http://").removesuffix("/v1/responses")
            policy = PEER_POLICY.replace("first_byte_s: 2", "first_byte_s: 0.2")
            target = build_target(parse_policy(policy.format(url=base)).deployments["ws"], UpstreamPools(), SocketPools())
            started = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamTimeout, match="no event within 0.2s"):
                await target.send(turn({"input": "x"}, "r1"))
            await asyncio.wait_for(peer.done, 2)  # the socket was dropped, not pooled
            return asyncio.get_running_loop().time() - started, target.pool
    waited, pool = asyncio.run(main())
    assert 0.2 <= waited < 1.5 and (pool.open, pool.idle) == (0, [])


def test_a_socket_that_spoke_while_idle_is_not_handed_a_turn():
    async def script(reader, writer):
        await asyncio.sleep(0.05)
        writer.write(frame(b'{"type":"response.output_text.delta","delta":"stray"}'))
        await reader.read()

    async def main():
        async with Peer(script) as peer:
            pool = SocketPool(peer.url, {}, 2, 1)
            ws = await pool.acquire()
            pool.release(ws, reusable=True)
            await asyncio.sleep(0.2)
            again = await pool.acquire()
            pool.close()
            return ws, again, pool.stats.connects
    ws, again, connects = asyncio.run(main())
    assert again is not ws and connects == 2 and not ws.open


@pytest.mark.parametrize(("setting", "negotiated"), [("", True), (", websocket_compression: deflate", True),
                                                      (", websocket_compression: none", False)])
def test_the_deployments_compression_setting_reaches_its_sockets_and_the_simulator_agrees(sim, ws_url, setting,
                                                                                          negotiated):
    async def scenario():
        policy = POLICY.replace("websocket_max_connections: 2}}", "websocket_max_connections: 2" + setting + "}}")
        pools = UpstreamPools()
        target = build_target(parse_policy(policy.format(url=sim.url)).deployments["ws"], pools, SocketPools())
        pin = SocketPin()
        answer = await target.send(turn({"input": "hello " * 2000}, "r1"), pin)
        body = b"".join([c async for c in answer.iter_body()])
        sock = pin.ws
        target.pool.close()
        pools.close()
        return sock.deflate is not None, body
    deflated, body = run(scenario())
    assert deflated is negotiated
    assert b'"type":"response.completed"' in body  # a whole turn both ways, compressed or not


def test_deployments_that_differ_only_in_compression_get_separate_pools(sim, ws_url):
    async def scenario():
        pools = SocketPools()
        on = parse_policy(POLICY.format(url=sim.url)).deployments["ws"]
        off = parse_policy(POLICY.replace("2}}", "2, websocket_compression: none}}").format(url=sim.url)).deployments["ws"]
        deflating, plain = pools.get(on), pools.get(off)
        assert deflating is not plain and pools.get(on) is deflating  # a reload to the same setting keeps it
        one, two = await deflating.acquire(), await plain.acquire()
        deflating.release(one, reusable=True)
        plain.release(two, reusable=True)
        sockets = (await deflating.acquire(), await plain.acquire())  # each pool hands back its own kind
        pools.close()
        return [s.deflate is not None for s in sockets], sockets == (one, two)
    assert run(scenario()) == ([True, False], True)


# --- what the pool remembers of its idle sockets, for HTTP clients' resent conversations ------------

BODY = {"model": "ws", "store": False, "instructions": "x"}
ITEM = {"role": "user", "content": "hi"}
REPLY = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "yo"}]}


def test_fresh_turns_leave_remembered_sockets_to_their_conversations(sim, ws_url):
    async def scenario():
        pool = SocketPool(ws_url, {}, limit=3, connect_s=1)
        a, b = await pool.acquire(), await pool.acquire()
        pool.release(a, True, Memory("resp_a", 2, b"a"))
        pool.release(b, True)
        assert await pool.acquire() is b, "an idle socket nothing is remembered of, first"
        c = await pool.acquire()
        assert c not in (a, b) and pool.stats.connects == 3, "then a new socket while under the cap"
        pool.release(b, True, Memory("resp_b", 2, b"b"))
        assert await pool.acquire() is a, "at the cap: the socket remembered longest"
        assert list(pool.remembered) == [b]
        pool.close()
        assert pool.remembered == {}
    run(scenario())


def test_a_remembered_socket_is_claimed_once_and_only_by_its_conversation(sim, ws_url):
    async def scenario():
        pool = SocketPool(ws_url, {}, limit=2, connect_s=1)
        ws = await pool.acquire()
        memory = conversation({**BODY, "input": [ITEM]}, "m").memory("resp_1", [REPLY])
        pool.release(ws, True, memory)
        other = conversation({**BODY, "instructions": "y", "input": [ITEM, REPLY, ITEM]}, "m")
        assert pool.claim(other) is None and pool.idle == [ws]
        claimed = pool.claim(conversation({**BODY, "input": [ITEM, REPLY, ITEM]}, "m"))
        assert claimed == (ws, memory) and pool.idle == [] and pool.remembered == {}
        assert pool.claim(conversation({**BODY, "input": [ITEM, REPLY, ITEM]}, "m")) is None, "taken: not twice"
        pool.release(ws, False)
        pool.close()
    run(scenario())


def test_an_unchained_event_reads_as_the_full_sends_answer():
    created = b'{"type":"response.created","response":{"id":"resp_2","instructions":"say \\"previous_response_id\\":\\"resp_1\\"",' \
              b'"previous_response_id":"resp_1","status":"in_progress"}}'
    out = _unchained(created, "resp_1")
    assert orjson.loads(out)["response"]["previous_response_id"] is None
    assert orjson.loads(out)["response"]["instructions"] == orjson.loads(created)["response"]["instructions"]
    spaced = b'{"type": "response.completed", "response": {"id": "resp_2", "previous_response_id": "resp_1"}}'
    assert orjson.loads(_unchained(spaced, "resp_1"))["response"]["previous_response_id"] is None
    delta = b'{"type":"response.output_text.delta","delta":"resp_1"}'
    assert _unchained(delta, "resp_1") is delta
    other = b'{"type":"response.completed","response":{"id":"resp_1","previous_response_id":null}}'
    assert _unchained(other, "resp_1") == other


def test_a_refused_continuation_is_resent_in_full_on_the_same_socket():
    frames = []

    async def script(reader, writer):
        frames.append(orjson.loads((await read_frame(reader))[1]))
        writer.write(frame(b'{"type":"error","status":400,"error":{"type":"invalid_request_error",'
                           b'"code":"previous_response_not_found","message":"gone","param":null}}'))
        frames.append(orjson.loads((await read_frame(reader))[1]))
        writer.write(b"".join(frame(e) for e in [CREATED, *DELTAS, COMPLETED]))
        await reader.read()

    async def main():
        async with Peer(script) as peer:
            target = await peer_target(peer)
            ws = await target.pool.acquire()
            target.pool.release(ws, True, conversation({**BODY, "input": [ITEM]}, "m").memory("resp_0", [REPLY]))
            req = turn({**BODY, "input": [ITEM, REPLY, {"role": "user", "content": "more"}]}, "r1")
            body = b"".join([c async for c in (await target.send(req)).iter_body()])
            return body, target.pool.stats
    body, stats = asyncio.run(asyncio.wait_for(main(), 10))
    assert frames[0]["previous_response_id"] == "resp_0" and frames[0]["input"] == [{"role": "user", "content": "more"}]
    assert "previous_response_id" not in frames[1] and len(frames[1]["input"]) == 3
    assert b"tok3" in body and b'"type":"error"' not in body
    assert (stats.continued, stats.continue_misses, stats.turns) == (1, 1, 1)
