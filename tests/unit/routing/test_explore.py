"""Idle probes against real simulated upstreams: a demoted lane nobody sends to is seen to recover."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from proxy.call import ModelRequest, Outcome
from proxy.config.loader import parse_policy
from proxy.limits.limiter import Limiter
from proxy.routing.explore import PROBE_ROUTE, IdleProber
from proxy.routing.router import Router
from proxy.upstream.http_pool import UpstreamPools
from proxy.upstream.scan import StreamScanner
from proxy.upstream.ws_pool import SocketPools
from tests.support import simulator

POLICY = """\
version: 1
auth: open
deployments:
  - {{name: wafer, provider: openai, model: m-wafer, base_url: '{wafer}/v1', hardware: wafer,
      priors: {{ttft_ms: 20, tokens_per_s: 4000}}, learning: {{idle_probe_s: {idle}}}{limits}}}
  - {{name: gpu, provider: openai, model: m-gpu, base_url: '{gpu}/v1', hardware: gpu,
      priors: {{ttft_ms: 150, tokens_per_s: 400}}}}
routes:
  - {{name: codex, candidates: [wafer, gpu], strategy: latency}}
"""


@pytest.fixture(scope="module")
def sims():
    with simulator("wafer", ttft_ms=5, tokens_per_s=4000) as wafer, simulator("gpu", ttft_ms=150, tokens_per_s=400) as gpu:
        yield wafer, gpu


def build(sims, idle: float = 0.3, limits: str = "") -> Router:
    wafer, gpu = sims
    for server in sims:
        httpx.post(server.url + "/sim/reset").raise_for_status()
    policy = parse_policy(POLICY.format(wafer=wafer.url, gpu=gpu.url, idle=idle, limits=limits))
    return Router(policy, UpstreamPools(), SocketPools())


async def client_request(router: Router) -> Outcome:
    """One streamed client request dispatched and read whole, its Outcome learnt as the pipeline does."""
    body = {"model": "codex", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": True}
    req = ModelRequest.from_body("chat", None, body, "req_c", size=200)
    attempt = await router.dispatch(router.resolve("codex"), req)
    scanner = StreamScanner(attempt.sent_at)
    async for chunk in attempt.response.iter_body():
        scanner.feed(chunk)
    outcome = Outcome("req_c", "chat", "codex", "k", None, deployment=attempt.deployment.name, reason=attempt.reason,
                      status=attempt.response.status, stream=True, upstream_started=attempt.sent_at,
                      first_token_at=scanner.first_token_at, finished=time.perf_counter())
    outcome.take_usage(scanner.usage_or_estimate(req.input_estimate))
    router.live.stats.finished(outcome)
    return outcome


def wafer_requests(sims) -> int:
    return httpx.get(sims[0].url + "/sim/stats").json()["requests"]


def test_a_demoted_lane_gets_an_idle_probe_and_the_next_request_goes_back_to_it(loop, sims):
    """Issue 13 item 3: lane degrades, traffic stops, lane recovers, the next request goes to the fast lane."""
    router = build(sims)
    finished: list[Outcome] = []

    def finish(outcome: Outcome) -> None:  # what ProxyState.finish does with it: statistics, ledger, ...
        router.live.stats.finished(outcome)
        finished.append(outcome)

    prober = IdleProber(lambda: router, None, finish)

    async def run() -> None:
        slow = await client_request(router)  # the wafer lane's first token takes 1.5 s: it is demoted
        assert slow.deployment == "wafer" and slow.first_token_at - slow.upstream_started > 1.4
        assert (await client_request(router)).deployment == "gpu"
        assert prober.due(router, time.monotonic()) == [], "not idle yet: it had a sample just now"
        stopped = time.monotonic()  # traffic stops; the lane has recovered (the fault was used up)
        while not finished and time.monotonic() - stopped < 3.0:
            prober.tick(time.monotonic())
            await asyncio.sleep(0.05)
        assert finished, "no probe within 3 s"
        (probe,) = finished
        assert time.monotonic() - stopped < 0.3 + 0.5  # one idle_probe_s after the last sample, give or take a tick
        assert (probe.route, probe.deployment, probe.status, probe.reason) == (PROBE_ROUTE, "wafer", 200, "probe:wafer=idle")
        assert probe.usage_reported and probe.output_tokens == 1  # billed from what the provider reported
        back = await client_request(router)
        assert (back.deployment, back.reason) == ("wafer", "latency")

    httpx.post(sims[0].url + "/sim/faults", json={"mode": "slow_first_byte:1500", "count": 1}).raise_for_status()
    loop.run_until_complete(run())
    assert router.live.counters.probes == 1


def test_a_healthy_lane_and_a_lane_with_probes_off_get_none(loop, sims):
    router = build(sims)
    loop.run_until_complete(client_request(router))  # fast: not demoted
    prober = IdleProber(lambda: router, None, lambda outcome: None)
    assert prober.due(router, time.monotonic() + 60) == []
    off = build(sims, idle=0)
    stats = off.live.stats.get("wafer")
    stats.ttft[0].add(3000.0, time.monotonic(), 30.0)  # measured slow, long ago enough
    assert IdleProber(lambda: off, None, lambda outcome: None).due(off, time.monotonic() + 60) == []


def demoted_router(sims, limits: str = "") -> Router:
    router = build(sims, limits=limits)
    router.live.stats.get("wafer").ttft[0].add(3000.0, time.monotonic(), 30.0)
    return router


def test_no_probe_takes_a_lanes_last_request(loop, sims):
    router = demoted_router(sims)
    router.live.headroom.learn("wafer", 200, [(b"x-ratelimit-remaining-requests", b"1"), (b"x-ratelimit-reset-requests", b"30s")])
    prober = IdleProber(lambda: router, None, lambda outcome: None)
    assert prober.due(router, time.monotonic() + 1) == []
    router.live.headroom.learn("wafer", 200, [(b"x-ratelimit-remaining-requests", b"2"), (b"x-ratelimit-reset-requests", b"30s")])
    assert [d.name for d in prober.due(router, time.monotonic() + 1)] == ["wafer"]


def test_a_probe_is_admitted_by_the_deployments_limits_like_any_request(loop, sims):
    router = demoted_router(sims, limits=", limits: {rpm: 1}")
    limiter = Limiter.from_policy(router.policy)
    finished: list[Outcome] = []
    prober = IdleProber(lambda: router, limiter, finished.append)
    wafer = router.policy.deployments["wafer"]
    first = loop.run_until_complete(prober.probe(router, wafer))
    assert first is not None and first.status == 200 and finished == [first]
    assert loop.run_until_complete(prober.probe(router, wafer)) is None  # the minute's one request is spent
    assert finished == [first] and wafer_requests(sims) == 1
