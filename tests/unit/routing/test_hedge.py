"""Hedged dispatch against real simulated upstreams: who wins, what the loser cost, fallback."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from proxy.call import ModelRequest
from proxy.config.loader import parse_policy
from proxy.errors import UpstreamUnavailable
from proxy.limits.limiter import Limiter
from proxy.routing.router import Router
from proxy.upstream.http_pool import UpstreamPools
from proxy.upstream.ws_pool import SocketPools
from tests.support import free_port, simulator

POLICY = """\
version: 1
auth: open
deployments:
  - {{name: late, provider: openai, model: m-late, base_url: '{late}/v1'}}
  - {{name: quick, provider: openai, model: m-quick, base_url: '{quick}/v1'}}
  - {{name: dead, provider: openai, model: m-dead, base_url: 'http://127.0.0.1:{dead}/v1', timeouts: {{connect_s: 0.3}}}}
  - {{name: dead-too, provider: openai, model: m-dead2, base_url: 'http://127.0.0.1:{dead}/v2', timeouts: {{connect_s: 0.3}}}}
routes:
  - {{name: race, candidates: [late, quick], hedge: {{after_ms: 50}}}}
  - {{name: quick-first, candidates: [quick, late], hedge: {{after_ms: 300}}}}
  - {{name: dead-first, candidates: [dead, quick], hedge: {{after_ms: 300}}}}
  - {{name: all-dead, candidates: [dead, dead-too], hedge: {{after_ms: 50}}}}
  - {{name: reserved-race, candidates: [late, quick], hedge: {{after_ms: 50}}, spill: {{reserve_fraction: 0.5, reserve_min_gain_ms: 60000}}}}
  - {{name: reserved-fallback, candidates: [dead, quick], hedge: {{after_ms: 50}}, spill: {{reserve_fraction: 0.5, reserve_min_gain_ms: 60000}}}}
"""


@pytest.fixture(scope="module")
def sims():
    with simulator("gpu", ttft_ms=1500, tokens_per_s=4000) as late, simulator("wafer", ttft_ms=5, tokens_per_s=4000) as quick:
        yield late, quick


@pytest.fixture
def router(sims, loop):
    late, quick = sims
    for server in sims:
        httpx.post(server.url + "/sim/reset").raise_for_status()
    text = POLICY.format(late=late.url, quick=quick.url, dead=free_port())
    pools = UpstreamPools()
    router = Router(parse_policy(text), pools, SocketPools())
    yield router
    pools.close()  # in the loop's lifetime: its idle connections belong to it


def dispatch(loop: asyncio.AbstractEventLoop, router: Router, route: str, stream: bool = True,
             limiter: Limiter | None = None):
    """One dispatch and the whole body (admitted against ``limiter`` when given)."""
    body = {"model": route, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream}

    async def run():
        ticket = limiter.borrow("k", 50, 8) if limiter is not None else None
        attempt = await router.dispatch(router.resolve(route), ModelRequest.from_body("chat", None, body, "req_h", size=200),
                                        ticket=ticket)
        return attempt, await attempt.response.read()
    return loop.run_until_complete(run())


@pytest.mark.parametrize("stream", [True, False])
def test_the_hedge_wins_over_a_candidate_slow_to_its_first_token(loop, router, sims, stream):
    attempt, body = dispatch(loop, router, "race", stream)
    assert attempt.deployment.name == "quick" and attempt.reason.endswith(";hedge-won")
    assert b"usage" in body and router.live.counters.hedges_started == 1 and router.live.counters.hedges_won == 1
    (lost,) = attempt.losers
    assert lost.deployment.name == "late" and lost.first_token_at is None
    assert lost.usage.reported is False and lost.usage.output_tokens == 0  # cancelled before any output
    late, _ = sims
    assert httpx.get(late.url + "/sim/stats").json()["disconnects"] == 1  # the loser's exchange was aborted


def test_no_hedge_when_the_first_candidate_answers_in_time(loop, router):
    attempt, _ = dispatch(loop, router, "quick-first")
    assert attempt.deployment.name == "quick" and attempt.losers == ()
    assert router.live.counters.hedges_started == 0 and "hedge" not in attempt.reason


def test_a_candidate_failing_before_its_first_token_falls_back_like_an_unhedged_request(loop, router):
    attempt, _ = dispatch(loop, router, "dead-first")
    assert attempt.deployment.name == "quick" and attempt.reason == "fallback:dead=connect"
    assert attempt.losers == ()


def test_every_candidate_failing_is_an_upstream_refusal(loop, router):
    with pytest.raises(UpstreamUnavailable) as refused:
        dispatch(loop, router, "all-dead")
    assert "dead=connect" in refused.value.message and "dead-too=connect" in refused.value.message
    assert refused.value.timed_out is False


def test_a_hedge_leg_our_limits_refuse_is_not_a_failure(loop, router):
    policy = parse_policy(POLICY.replace("{{name: quick, provider: openai, model: m-quick,",
                                         "{{name: quick, provider: openai, model: m-quick, limits: {{rpm: 1}},")
                          .format(late="http://unused", quick="http://unused", dead=1))
    limiter = Limiter.from_policy(policy)
    dispatch(loop, router, "quick-first", limiter=limiter)  # spends quick's one request this minute
    attempt, _ = dispatch(loop, router, "race", limiter=limiter)  # late is slow; the hedge to quick is refused
    assert attempt.deployment.name == "late" and attempt.reason == "primary;hedge-refused"
    assert attempt.losers == () and router.live.counters.fallbacks == 0


def keep_in_reserve(router: Router, name: str) -> None:
    """The provider says a tenth of ``name``'s minute is left: below the routes' reserve_fraction 0.5."""
    router.live.headroom.learn(name, 200, [(b"x-ratelimit-limit-requests", b"100"), (b"x-ratelimit-remaining-requests", b"10"),
                                           (b"x-ratelimit-reset-requests", b"60s")])


def test_no_hedge_into_a_candidate_spilled_to_keep_a_reserve(loop, router, sims):
    """Issue 13: the hedge started the next candidate even when routing had spilled it to keep its quota."""
    keep_in_reserve(router, "quick")
    attempt, body = dispatch(loop, router, "reserved-race")  # late takes 1.5 s to its first token; no hedge fires
    assert attempt.deployment.name == "late" and attempt.reason == "primary;spill:quick=reserve"
    assert b"usage" in body and attempt.losers == () and router.live.counters.hedges_started == 0
    _, quick = sims
    assert httpx.get(quick.url + "/sim/stats").json()["requests"] == 0  # the reserved lane was not sent anything


def test_a_spilled_candidate_still_takes_the_fallback_when_the_others_fail(loop, router):
    keep_in_reserve(router, "quick")
    attempt, _ = dispatch(loop, router, "reserved-fallback")
    assert attempt.deployment.name == "quick" and attempt.reason == "fallback:dead=connect"
