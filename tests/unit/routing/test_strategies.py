"""Routing decisions on constructed statistics: strategies, priors, SLOs, hints, headroom, breakers; and routing that forgets (a demoted lane is probed and wins its traffic back)."""
from __future__ import annotations

import heapq
import logging
import random
import time

import orjson
import pytest

from proxy.api.errors import http_error
from proxy.call import ModelRequest, Outcome
from proxy.config import PolicyError, parse_policy
from proxy.errors import Refused
from proxy.limits.headroom import HeadroomLearner
from proxy.pricing.catalogue import activate, book_for
from proxy.routing.hints import NO_HINTS, Hints
from proxy.routing.live import RoutingState
from proxy.routing.stats import LatencyStats, Sketch
from proxy.routing.strategies import order_candidates, predict
from tests.unit.routing.test_stats import Clock

POLICY = """\
version: 1
auth: open
deployments:
  - name: wafer
    provider: cerebras
    model: m-wafer
    base_url: http://127.0.0.1:9/v1
    hardware: wafer
    priors: {{ttft_ms: 80, tokens_per_s: 1500}}
  - name: gpu
    provider: openai
    model: m-gpu
    base_url: http://127.0.0.1:9/v1
    hardware: gpu
    priors: {{ttft_ms: 400, tokens_per_s: 80}}
prices:
  m-wafer:
    - {{effective_from: 2026-01-01, input_per_mtok: 2.0, output_per_mtok: 8.0, status: announced}}
  m-gpu:
    - {{effective_from: 2026-01-01, input_per_mtok: 0.5, output_per_mtok: 2.0, status: announced}}
routes:
  - name: r
    candidates: [wafer, gpu]
    strategy: {strategy}
{extra}"""


def policy(strategy: str = "latency", extra: str = ""):
    """The test policy, with its prices made the ones the `cost` strategy sees (as loading a policy does)."""
    pol = parse_policy(POLICY.format(strategy=strategy, extra=extra))
    activate(book_for(pol))
    return pol


def request(max_tokens: int | None = 200, prompt_chars: int = 400) -> ModelRequest:
    body = {"model": "r", "messages": [{"role": "user", "content": "x" * prompt_chars}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    raw = orjson.dumps(body)
    return ModelRequest.from_body("chat", raw, body, "req_test")


def observe(live: RoutingState, name: str, ttft_ms: float, tokens_per_s: float, output_tokens: int = 200,
            input_tokens: int = 100, status: int = 200) -> None:
    """Feed the statistics one finished streamed request, as the API layer does."""
    live.stats.started(name)
    sent = 1000.0
    first = sent + ttft_ms / 1000
    outcome = Outcome("r", "chat", "r", "k", None, deployment=name, status=status, stream=True,
                      input_tokens=input_tokens, output_tokens=output_tokens, upstream_started=sent,
                      first_token_at=first, finished=first + (output_tokens - 1) / tokens_per_s)
    live.stats.finished(outcome)


def order(pol, req=None, hints=NO_HINTS, live=None, now=None):
    live = live or RoutingState()
    deps, reason, _ = order_candidates(pol.routes["r"], pol.deployments, req or request(), hints, live,
                                    time.monotonic() if now is None else now)
    return [d.name for d in deps], reason


# --- strategies ----------------------------------------------------------------


def test_cold_start_uses_priors():
    live = RoutingState()
    pol = policy("latency")
    assert order(pol, live=live) == (["wafer", "gpu"], "latency")
    estimate = live.stats.get("gpu").estimate(pol.deployments["gpu"].priors, 100)
    assert (estimate.ttft_ms, estimate.tokens_per_s, estimate.warm) == (400, 80, False)
    # Priors that say the GPU lane is faster make it the choice before anything is measured.
    fast_gpu = parse_policy(POLICY.format(strategy="latency", extra="").replace("ttft_ms: 400, tokens_per_s: 80",
                                                                                 "ttft_ms: 10, tokens_per_s: 5000"))
    assert order(fast_gpu)[0] == ["gpu", "wafer"]


def test_latency_follows_measurements_over_priors():
    live = RoutingState()
    for _ in range(5):
        observe(live, "wafer", ttft_ms=3000, tokens_per_s=1500, output_tokens=4000)  # the fast lane queues badly today
        observe(live, "gpu", ttft_ms=300, tokens_per_s=100, output_tokens=4000)
    assert order(policy("latency"), request(max_tokens=100), live=live)[0] == ["gpu", "wafer"]
    # For a long answer the decode rate dominates: 4000 tokens at 100 tok/s is 40 s on the GPU lane.
    assert order(policy("latency"), request(max_tokens=4000), live=live)[0] == ["wafer", "gpu"]


def test_latency_counts_queueing_from_in_flight():
    live = RoutingState()
    observe(live, "wafer", ttft_ms=100, tokens_per_s=1000)
    observe(live, "gpu", ttft_ms=150, tokens_per_s=1000)
    assert order(policy("latency"), live=live)[0][0] == "wafer"
    for _ in range(40):  # 40 in flight against a prior concurrency of 8
        live.stats.started("wafer")
    assert order(policy("latency"), live=live)[0][0] == "gpu"


def test_statistics_are_kept_per_prompt_size_bucket():
    live = RoutingState()
    observe(live, "wafer", ttft_ms=50, tokens_per_s=1500, input_tokens=200)
    observe(live, "wafer", ttft_ms=9000, tokens_per_s=1500, input_tokens=20000)  # long contexts are slow here
    observe(live, "gpu", ttft_ms=400, tokens_per_s=200, input_tokens=200)
    observe(live, "gpu", ttft_ms=500, tokens_per_s=200, input_tokens=20000)
    assert order(policy("latency"), request(max_tokens=50, prompt_chars=800), live=live)[0][0] == "wafer"
    assert order(policy("latency"), request(max_tokens=50, prompt_chars=80000), live=live)[0][0] == "gpu"


def test_slo_is_checked_at_its_percentile():
    live = RoutingState()
    for i in range(40):  # wafer: usually 60 ms, but 1 in 4 takes 5 s
        observe(live, "wafer", ttft_ms=5000 if i % 4 == 0 else 60, tokens_per_s=1500)
        observe(live, "gpu", ttft_ms=900, tokens_per_s=100)
    slo = "    slo: {ttft_ms: 1000, percentile: 90}\n"
    assert order(policy("latency", slo), live=live) == (["gpu", "wafer"], "latency")
    relaxed = "    slo: {ttft_ms: 1000, percentile: 50}\n"
    assert order(policy("latency", relaxed), live=live)[0] == ["wafer", "gpu"]


def test_cost_picks_the_cheapest_that_meets_the_slo():
    req = request(max_tokens=100)
    assert order(policy("cost", "    slo: {total_ms: 5000}\n"), req) == (["gpu", "wafer"], "cost")
    # 100 tokens at 80 tok/s + 400 ms TTFT misses a 1 s SLO: the dearer fast lane is the only one that meets it.
    assert order(policy("cost", "    slo: {total_ms: 1000}\n"), req) == (["wafer", "gpu"], "cost")
    # Nothing meets 10 ms: be as fast as possible and say so.
    assert order(policy("cost", "    slo: {total_ms: 10}\n"), req) == (["wafer", "gpu"], "cost;slo-miss")
    pol = policy("cost")
    prediction = predict(pol.deployments["gpu"], pol.routes["r"], req, NO_HINTS, RoutingState(), with_cost=True)
    assert prediction.cost_usd == pytest.approx((req.input_estimate * 0.5 + 100 * 2.0) / 1e6)


def test_cost_puts_unpriced_models_last():
    pol = parse_policy(POLICY.format(strategy="cost", extra="").replace("  m-gpu:", "  m-other:"))
    activate(book_for(pol))
    assert order(pol, request(max_tokens=100))[0] == ["wafer", "gpu"], "gpu's model has no price: not assumed free"
    with pytest.raises(Refused) as info:
        order(pol, request(max_tokens=100), Hints(max_cost_usd=1e-9))
    assert "cheapest is estimated" in info.value.message


def test_weighted_shares_traffic_by_weight():
    live = RoutingState(rng=random.Random(7))
    pol = policy("weighted", "    weights: {wafer: 3, gpu: 1}\n")
    firsts = [order(pol, live=live)[0][0] for _ in range(4000)]
    assert 0.70 < firsts.count("wafer") / len(firsts) < 0.80
    never = policy("weighted", "    weights: {wafer: 0, gpu: 1}\n")
    assert {tuple(order(never, live=live)[0]) for _ in range(200)} == {("gpu", "wafer")}


def test_fallback_keeps_the_listed_order():
    live = RoutingState()
    for _ in range(5):
        observe(live, "wafer", ttft_ms=9000, tokens_per_s=10)
    assert order(policy("fallback"), live=live) == (["wafer", "gpu"], "primary")


def test_error_rate_makes_a_candidate_less_attractive():
    live = RoutingState()
    observe(live, "wafer", ttft_ms=100, tokens_per_s=1000)
    observe(live, "gpu", ttft_ms=130, tokens_per_s=1000)
    assert order(policy("latency"), live=live)[0][0] == "wafer"
    for _ in range(8):
        live.stats.started("wafer")
        live.stats.failed_before_response("wafer")
    assert order(policy("latency"), live=live)[0][0] == "gpu"


def test_sketch_quantiles_and_ring():
    sketch = Sketch()
    for value in range(1, 101):
        sketch.add(float(value))
    assert len(sketch) == 64  # the last 64 samples: 37..100
    assert sketch.quantile(0.0) == 37 and sketch.quantile(0.5) == 69 and sketch.quantile(0.99) == 100


# --- hints ---------------------------------------------------------------------


def test_lane_hint_moves_that_lane_first():
    assert order(policy("latency"), hints=Hints.parse(b"deep", None, None)) == (["gpu", "wafer"], "latency;hint:lane=gpu")
    assert order(policy("latency"), hints=Hints.parse(b"fast", None, None)) == (["wafer", "gpu"], "latency;hint:lane=wafer")
    assert order(policy("latency"), hints=Hints.parse(b"tpu", None, None)) == (["wafer", "gpu"], "latency")


def test_max_latency_hint_demotes_slow_candidates_even_for_fallback_routes():
    pol = policy("fallback").routes["r"]
    assert pol.strategy == "fallback"
    gpu_first = parse_policy(POLICY.format(strategy="fallback", extra="").replace("[wafer, gpu]", "[gpu, wafer]"))
    assert order(gpu_first)[0] == ["gpu", "wafer"]
    assert order(gpu_first, hints=Hints(max_latency_ms=1000)) == (["wafer", "gpu"], "primary")


def test_max_cost_hint_drops_dear_candidates_or_refuses():
    req = request(max_tokens=1000)
    assert order(policy("latency"), req, Hints(max_cost_usd=0.005))[0] == ["gpu"]
    with pytest.raises(Refused) as info:
        order(policy("latency"), req, Hints(max_cost_usd=0.0000001))
    assert http_error(info.value).status == 400 and info.value.code == "max_cost_exceeded"


def test_bad_hint_values_are_400():
    with pytest.raises(Refused) as info:
        Hints.parse(None, b"soon", None)
    assert http_error(info.value).status == 400 and info.value.param == "x-laneway-max-latency-ms"
    with pytest.raises(Refused):
        Hints.parse(None, None, b"-1")


# --- headroom ------------------------------------------------------------------


def test_provider_headers_in_both_dialects():
    view = HeadroomLearner()
    view.learn("a", 200, [(b"x-ratelimit-limit-requests", b"30"), (b"x-ratelimit-remaining-requests", b"4"),
                          (b"x-ratelimit-reset-requests", b"6m0s"), (b"x-ratelimit-remaining-tokens", b"900"),
                          (b"x-ratelimit-reset-tokens", b"12ms")], now=100.0)
    room = view.headroom("a")
    requests, tokens = room.windows["requests"], room.windows["tokens"]
    assert (requests.remaining, requests.limit, tokens.remaining) == (4, 30, 900)
    assert requests.reset_at == pytest.approx(460.0) and tokens.reset_at == pytest.approx(100.012)
    view.learn("c", 200, [(b"x-ratelimit-remaining-tokens-minute", b"1200"), (b"x-ratelimit-limit-tokens-minute", b"60000"),
                          (b"x-ratelimit-reset-tokens-minute", b"33.5"), (b"x-ratelimit-remaining-requests-day", b"0"),
                          (b"x-ratelimit-reset-requests-day", b"33011.38")], now=0.0)
    room = view.headroom("c")
    assert (room.tokens, room.windows["tokens-minute"].limit, room.requests) == (1200, 60000, 0)
    assert room.short(need_tokens=10, min_requests=1, min_tokens=0, now=1.0) == "requests"
    # Anthropic's dialect, and the tighter of two request windows.
    view.learn("d", 200, [(b"anthropic-ratelimit-requests-remaining", b"7"), (b"anthropic-ratelimit-requests-limit", b"50"),
                          (b"x-ratelimit-remaining-requests-day", b"3"), (b"x-ratelimit-reset-requests-day", b"100")], now=0.0)
    assert view.headroom("d").requests == 3 and view.headroom("d").tightest("requests").reset_at == pytest.approx(100.0)
    view.learn("b", 200, [(b"content-type", b"application/json")])
    assert view.headroom("b") is None


def test_spill_moves_a_lane_short_of_quota_behind_before_it_answers_429():
    live = RoutingState()
    pol = policy("latency")
    now = time.monotonic()
    live.headroom.learn("wafer", 200, [(b"x-ratelimit-remaining-requests", b"1"),
                                                (b"x-ratelimit-reset-requests", b"30s")], now=now)
    assert order(pol, live=live, now=now)[0] == ["wafer", "gpu"]
    live.headroom.sent("wafer", 100)  # one more request sent: none left in the window
    assert order(pol, live=live, now=now) == (["gpu", "wafer"], "latency;spill:wafer=requests")
    assert live.counters.spills == 1
    assert order(pol, live=live, now=now + 31)[0] == ["wafer", "gpu"], "the window has refilled"
    # Tokens: the request's estimate (prompt + max_tokens) must fit in what is left.
    live = RoutingState()
    live.headroom.learn("wafer", 200, [(b"x-ratelimit-remaining-tokens", b"500"),
                                                (b"x-ratelimit-reset-tokens", b"10s")], now=now)
    assert order(pol, request(max_tokens=1000), live=live, now=now)[1] == "latency;spill:wafer=tokens"
    assert order(pol, request(max_tokens=100), live=live, now=now)[0][0] == "wafer"


def test_a_429_empties_the_view_until_retry_after():
    live = RoutingState()
    now = time.monotonic()
    live.headroom.learn("wafer", 429, [(b"retry-after-ms", b"2000")], now=now)
    assert order(policy("latency"), live=live, now=now + 1)[0][0] == "gpu"
    assert order(policy("latency"), live=live, now=now + 2.5)[0][0] == "wafer"


def test_reserve_keeps_scarce_quota_for_requests_that_gain_most():
    extra = "    spill: {reserve_fraction: 0.5, reserve_min_gain_ms: 3000}\n"
    live = RoutingState()
    now = time.monotonic()
    live.headroom.learn("wafer", 200, [(b"x-ratelimit-limit-requests", b"30"),
                                                (b"x-ratelimit-remaining-requests", b"10"),
                                                (b"x-ratelimit-reset-requests", b"30s")], now=now)
    # A short answer gains ~1.6 s from the fast lane: it goes to the GPU lane while quota is scarce.
    assert order(policy("latency", extra), request(max_tokens=100), live=live, now=now)[1] == "latency;spill:wafer=reserve"
    # A long answer gains ~25 s: it keeps the fast lane.
    assert order(policy("latency", extra), request(max_tokens=2000), live=live, now=now)[0][0] == "wafer"


def test_no_spill_when_every_candidate_is_short():
    live = RoutingState()
    now = time.monotonic()
    for name in ("wafer", "gpu"):
        live.headroom.learn(name, 429, [(b"retry-after", b"5")], now=now)
    assert order(policy("latency"), live=live, now=now) == (["wafer", "gpu"], "latency")


# --- breaker -------------------------------------------------------------------




def test_open_breaker_moves_its_deployment_last():
    live = RoutingState()
    pol = policy("latency", "")
    dep = pol.deployments["wafer"]
    now = time.monotonic()
    for _ in range(dep.breaker.failures):
        live.breakers.get("wafer", dep.breaker).failure(now)
    assert order(pol, live=live, now=now) == (["gpu", "wafer"], "latency;breaker:wafer=open")
    assert live.counters.breaker_skips == 1
    assert order(pol, live=live, now=now + dep.breaker.cooldown_s)[0][0] == "wafer"


# --- policy validation -----------------------------------------------------------


@pytest.mark.parametrize(
    "extra, strategy, where, message",
    [
        ("    weights: {wafer: 1, gpx: 2}\n", "weighted", "routes[0].weights.gpx", "not a candidate of this route; did you mean 'gpu'?"),
        ("    weights: {wafer: 1}\n", "latency", "routes[0].weights", "only apply with `strategy: weighted`"),
        ("    weights: {wafer: 0, gpu: 0}\n", "weighted", "routes[0].weights", "all weights are 0"),
        ("    weights: {wafer: -1}\n", "weighted", "routes[0].weights.wafer", "0 or more"),
        ("    slo: {ttft_ms: 500, percentile: 100}\n", "latency", "routes[0].slo.percentile", "between 0 and 100"),
        ("    slo: {ttft: 500}\n", "latency", "routes[0].slo.ttft", "did you mean 'ttft_ms'?"),
        ("    hedge: {}\n", "latency", "routes[0].hedge.after_ms", "missing required key 'after_ms'"),
        ("    spill: {min_requests: -2}\n", "latency", "routes[0].spill.min_requests", "0 or more"),
        ("    spill: {reserve_fraction: 1.5}\n", "latency", "routes[0].spill.reserve_fraction", "between 0 and 1"),
    ],
)
def test_route_field_errors_name_file_line_and_field(extra, strategy, where, message):
    with pytest.raises(PolicyError) as info:
        policy(strategy, extra)
    lines = [str(e) for e in info.value.errors]
    assert any(line.startswith(f"<string>:25: {where}:") and message in line for line in lines), lines


def test_deployment_field_errors():
    text = POLICY.format(strategy="latency", extra="").replace("priors: {ttft_ms: 80, tokens_per_s: 1500}",
                                                               "priors: {ttft_ms: 0, tokens_per_s: 1500}\n    breaker: {cooldown: 3}")
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    lines = [str(e) for e in info.value.errors]
    assert any(line.startswith("<string>:9: deployments[0].priors.ttft_ms:") for line in lines), lines
    assert any(line.startswith("<string>:10: deployments[0].breaker.cooldown:") and "cooldown_s" in line for line in lines), lines


def test_new_fields_load():
    pol = policy("weighted", "    weights: {wafer: 2}\n    hedge: {after_ms: 250}\n    slo: {ttft_ms: 300, tokens_per_s: 500}\n"
                             "    spill: {min_requests: 2, min_tokens: 1000, reserve_fraction: 0.3, reserve_min_gain_ms: 1500}\n")
    route = pol.routes["r"]
    assert route.hedge.after_ms == 250 and route.slo.percentile == 95 and dict(route.weights) == {"wafer": 2.0}
    assert (route.spill.min_requests, route.spill.min_tokens, route.spill.reserve_fraction) == (2, 1000, 0.3)
    assert pol.deployments["wafer"].priors.tokens_per_s == 1500


def probed_policy(extra: str = "", strategy: str = "latency", probe: float = 3.0):
    """The routing tests' probed_policy (wafer + gpu, priced), the wafer lane probed every ``probe`` s."""
    text = POLICY.format(strategy=strategy, extra=extra)
    pol = parse_policy(text.replace("    hardware: wafer\n", f"    hardware: wafer\n    learning: {{probe_interval_s: {probe}}}\n"))
    activate(book_for(pol))
    return pol


def replay(probe: float, degraded: tuple[float, float], until: float, every: float = 0.25) -> list[tuple[float, str]]:
    """Short requests every ``every`` s, each served by its first candidate; wafer TTFT x50 inside ``degraded``."""
    pol = probed_policy(probe=probe)
    clock = Clock()
    live = RoutingState(stats=LatencyStats(clock))
    route = pol.routes["r"]
    pending: list[tuple[float, int, Outcome]] = []
    served = []
    t, n = 0.0, 0
    while t < until:
        while pending and pending[0][0] <= t:
            clock.now, _, outcome = heapq.heappop(pending)
            live.stats.finished(outcome)
        clock.now = t
        chosen = order_candidates(route, pol.deployments, request(max_tokens=100), NO_HINTS, live, t)[0][0]
        live.stats.started(chosen.name)
        if chosen.name == "wafer":
            ttft, rate = (3.0 if degraded[0] <= t < degraded[1] else 0.06), 1500.0
        else:
            ttft, rate = 0.4, 80.0
        first = t + ttft
        finished = first + 99 / rate
        n += 1
        heapq.heappush(pending, (finished, n, Outcome(
            "r", "chat", "r", "k", None, deployment=chosen.name, status=200, stream=True, input_tokens=100,
            output_tokens=100, upstream_started=t, first_token_at=first, finished=finished)))
        served.append((t, chosen.name))
        t += every
    return served


def share(served: list[tuple[float, str]], start: float, end: float) -> float:
    window = [name for t, name in served if start <= t < end]
    return window.count("wafer") / len(window)


def test_a_lane_whose_ttft_went_x50_wins_its_traffic_back_within_30_s_of_recovering():
    degraded = (30.0, 90.0)
    served = replay(probe=3.0, degraded=degraded, until=130.0)
    before = share(served, 0, 30)
    assert before == 1.0
    assert share(served, 40, 90) < 0.2, "while it is slow the lane serves only its probes"
    recovered = next(t for t in range(90, 130) if share(served, t, t + 5) >= 0.8 * before)
    assert recovered - degraded[1] <= 30, f"back only {recovered - degraded[1]} s after the lane recovered"
    assert share(served, 120, 130) >= 0.8 * before


def test_without_probes_a_demoted_lane_never_comes_back():
    """The control: what main did (learning only from requests a lane served)."""
    served = replay(probe=0, degraded=(30.0, 90.0), until=130.0)
    assert share(served, 95, 130) == 0.0


def test_probes_are_a_small_bounded_share():
    served = replay(probe=3.0, degraded=(10.0, 130.0), until=130.0)
    probes = sum(1 for t, name in served if t >= 20 and name == "wafer")
    assert probes <= 110 / 3 + 1  # at most one per probe interval


def warmed() -> RoutingState:
    """Both lanes measured on 100-token answers, as at the start of a session."""
    live = RoutingState()
    for _ in range(10):
        observe(live, "wafer", ttft_ms=60, tokens_per_s=1500, output_tokens=100)
        observe(live, "gpu", ttft_ms=400, tokens_per_s=80, output_tokens=100)
    return live


def order_now(pol, live, req):
    deps, reason, _ = order_candidates(pol.routes["r"], pol.deployments, req, NO_HINTS, live, 0.0)
    return [d.name for d in deps], reason


def test_a_long_answer_is_predicted_from_its_own_max_tokens_not_the_lanes_average():
    """Issue 13 item 4: after 100-token warm-ups a max_tokens 1000 request was predicted to meet 4 s on the GPU lane."""
    live = warmed()
    pol = probed_policy("    slo: {total_ms: 4000}\n", strategy="cost")
    assert order_now(pol, live, request(100)) == (["gpu", "wafer"], "cost")  # 1.6 s on the cheap lane meets 4 s
    assert order_now(pol, live, request(1000)) == (["wafer", "gpu"], "cost")  # 12.9 s there would not
    tight = probed_policy("    slo: {total_ms: 500}\n")
    assert order_now(tight, live, request(1000))[1] == "latency;slo-miss", "a predicted miss shows in the reason"


@pytest.mark.parametrize("spill, reason", [("", "latency;spill:wafer=tokens"), ("    spill: {min_requests: 0}\n", "latency")])
def test_min_requests_0_means_fall_back_only_after_a_429(spill, reason):
    pol = probed_policy(spill)
    live = RoutingState()
    live.headroom.learn("wafer", 200, [(b"x-ratelimit-remaining-tokens", b"50"), (b"x-ratelimit-reset-tokens", b"30s")], now=0.0)
    assert order_now(pol, live, request(1000))[1] == reason
    live.headroom.learn("wafer", 429, [(b"retry-after", b"5")], now=0.0)
    assert order_now(pol, live, request(1000)) == (["gpu", "wafer"], "latency;spill:wafer=requests")


def test_spill_for_quota_is_logged_when_it_starts_and_when_it_stops(caplog):
    pol, live = policy("fallback"), RoutingState()
    now = time.monotonic()
    live.headroom.learn("wafer", 429, [(b"retry-after", b"1")], now=now)
    with caplog.at_level(logging.INFO, logger="laneway.routing"):
        for at in (now, now + 0.1, now + 2.0, now + 2.1):  # short twice, then the 429's wait is over
            order(pol, live=live, now=at)
    events = [(r.fields["event"], r.fields["deployment"]) for r in caplog.records]
    assert events == [("spill_started", "wafer"), ("spill_stopped", "wafer")]
