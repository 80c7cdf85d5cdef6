"""proxy/api/pipeline.py: every call gives back what it borrowed exactly once, however it ends, and
nothing is borrowed for a request that is refused as invalid."""
from __future__ import annotations

import asyncio

import pytest

from proxy.api.errors import ProxyError, http_error
from proxy.api.pipeline import Pipeline, read_hints
from proxy.api.state import ProxyState
from proxy.call import Outcome
from proxy.config.loader import parse_policy
from proxy.errors import ClientLimited, InvalidRequest, Refused
from proxy.routing.hints import NO_HINTS
from tests.support import free_port

POLICY = """\
version: 1
auth: keys
keys:
  - {{name: dev, sha256: {sha}, limits: {{concurrency: 1}}}}
deployments:
  - {{name: gpu, provider: openai, model: sim-gpu, base_url: "{gpu}/v1"}}
  - {{name: dead, provider: openai, model: m, base_url: "http://127.0.0.1:{dead}/v1", timeouts: {{connect_s: 0.3}}}}
routes:
  - {{name: codex, candidates: [gpu]}}
  - {{name: nowhere, candidates: [dead]}}
"""
BODY = {"model": "codex", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def state(gpu_sim, loop):
    policy = parse_policy(POLICY.format(sha="0" * 64, gpu=gpu_sim.url, dead=free_port()))
    state = ProxyState(policy)
    state.seen: list[Outcome] = []
    state.observers = [state.seen.append, *state.observers]
    yield state
    loop.run_until_complete(state.aclose())  # in the loop its connections belong to


def key(state: ProxyState):
    return state.policy.keys[0]


async def one_call(pipeline: Pipeline, state: ProxyState, body: dict, rid: str):
    call = pipeline.call("chat", rid, key(state))
    pipeline.request(call, dict(body), None, size=200)
    try:
        attempt = await pipeline.run(call)
        await attempt.response.read()
        attempt.response.release()
    except Refused as exc:
        pipeline.refused(call, http_error(exc))
        raise
    finally:
        pipeline.finish(call)
        await settled()
    return call


async def settled() -> None:
    """The limiter gives a slot back in a task of its own (the settle write): let it run."""
    await asyncio.sleep(0.01)


def test_a_finished_call_gives_back_its_slot_once_and_is_observed_once(loop, state) -> None:
    pipeline = Pipeline(state)

    async def main():
        call = await one_call(pipeline, state, BODY, "req_p1")
        pipeline.finish(call)  # a second finish (a transport's finally after an error path) changes nothing
        pipeline.finish(call)
        # concurrency 1: had the slot not been given back, this one would be refused
        await one_call(pipeline, state, BODY, "req_p2")
    loop.run_until_complete(main())
    assert [o.request_id for o in state.seen] == ["req_p1", "req_p2"]
    assert state.seen[0].status == 200 and state.seen[0].deployment == "gpu" and state.seen[0].route == "codex"


def test_a_call_held_open_keeps_its_slot_and_a_second_is_refused_as_client_limited(loop, state) -> None:
    pipeline = Pipeline(state)

    async def main():
        first = pipeline.call("chat", "req_h1", key(state))
        pipeline.request(first, dict(BODY), None, size=200)
        attempt = await pipeline.run(first)          # admitted, response not yet read: the slot is held
        with pytest.raises(ClientLimited):
            await one_call(pipeline, state, BODY, "req_h2")
        await attempt.response.read()
        attempt.response.release()
        pipeline.finish(first)
        await settled()
        await one_call(pipeline, state, BODY, "req_h3")
    loop.run_until_complete(main())
    assert [(o.request_id, o.status) for o in state.seen] == [("req_h2", 429), ("req_h1", 200), ("req_h3", 200)]


def test_a_call_no_upstream_could_take_frees_its_slot_and_reports_the_refusal(loop, state) -> None:
    pipeline = Pipeline(state)

    async def main():
        with pytest.raises(Refused) as refused:
            await one_call(pipeline, state, {**BODY, "model": "nowhere"}, "req_d1")
        assert http_error(refused.value).status in (502, 503)
        await one_call(pipeline, state, BODY, "req_d2")  # the dead route's reservation was given back
    loop.run_until_complete(main())
    dead, alive = state.seen
    assert dead.request_id == "req_d1" and dead.status in (502, 503) and dead.error_code
    assert alive.status == 200


@pytest.mark.parametrize("body", [
    {**BODY, "max_tokens": -5}, {**BODY, "max_tokens": 10**12}, {**BODY, "messages": "hi"}, {**BODY, "model": ""},
    {k: v for k, v in BODY.items() if k != "model"}, {**BODY, "stream": "yes"},
])
def test_an_invalid_request_is_refused_before_anything_is_borrowed(loop, state, body) -> None:
    pipeline = Pipeline(state)
    call = pipeline.call("chat", "req_bad", key(state))
    with pytest.raises((InvalidRequest, ProxyError)) as refused:
        pipeline.request(call, body, None, size=200)
    error = refused.value if isinstance(refused.value, ProxyError) else http_error(refused.value)
    assert error.status == 400
    assert call.ticket is None and call.hold is None and call.req is None

    async def still_admits():  # nothing was reserved: the one concurrency slot is free
        await one_call(pipeline, state, BODY, "req_ok")
    loop.run_until_complete(still_admits())


def test_read_hints_builds_nothing_without_hints_and_refuses_hostile_values() -> None:
    assert read_hints([(b"content-type", b"application/json")]) is NO_HINTS
    hints = read_hints([(b"x-laneway-lane", b" Fast "), (b"x-laneway-max-latency-ms", b"2000")])
    assert hints.max_latency_ms == 2000.0 and hints.lane
    for bad in (b"0", b"-1", b"nan", b"inf", b"1e999", b"two", b""):
        with pytest.raises(InvalidRequest) as refused:
            read_hints([(b"x-laneway-max-cost-usd", bad)])
        assert refused.value.param == "x-laneway-max-cost-usd"
