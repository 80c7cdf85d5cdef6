"""Pacing scarce quota: the bar learnt from a lane's demand, and what routing does with it."""
from __future__ import annotations

import pytest

from proxy.limits.headroom import Headroom, Window
from proxy.routing.hints import NO_HINTS
from proxy.routing.live import RoutingState
from proxy.routing.reserve import Demand
from proxy.routing.strategies import order_candidates
from tests.unit.routing.test_strategies import probed_policy, request


def room(remaining: float, limit: float = 30, kind: str = "requests", name: str = "requests",
         span_s: float = 60.0) -> Headroom:
    return Headroom(windows={name: Window(kind, remaining, limit, reset_at=1e9, span_s=span_s)})


def demand(gains: list[float], every_s: float, tokens: int = 1000) -> Demand:
    d = Demand()
    for i, gain in enumerate(gains):
        d.add(i * every_s, gain, tokens)
    return d


def test_no_bar_while_the_demand_fits_what_the_window_grants():
    # 30 requests a minute asked of a 30-a-minute lane: nobody needs to be spilled, however low it runs
    d = demand([100.0 * (i % 7 + 1) for i in range(30)], every_s=2.0)
    assert d.bar_ms(room(remaining=3), 0.8, now=58.0) == 0.0


def test_twice_the_demand_keeps_the_lane_for_the_better_half():
    gains = [float(g) for g in range(100, 6100, 100)]  # 60 requests in a minute, gains 100..6000 ms
    d = demand(gains, every_s=1.0)
    bar = d.bar_ms(room(remaining=10), 0.8, now=59.0)
    assert bar == 3000.0, "30 a minute fit: the 30 largest gains (3100..6000 ms) keep it"


def test_no_bar_above_the_reserve_fraction():
    d = demand([float(g) for g in range(100, 6100, 100)], every_s=1.0)
    assert d.bar_ms(room(remaining=29), 0.8, now=59.0) == 0.0


def test_token_windows_count_tokens():
    d = Demand()
    for i in range(20):
        d.add(float(i), 5000.0 if i % 2 else 500.0, 8000 if i % 2 else 1000)  # long turns gain more and cost more
    # 60k tokens a minute, pro rata over 19 s of history: 19k; the long turns alone ask 80k
    bar = d.bar_ms(room(remaining=5000, limit=60_000, kind="tokens", name="tokens"), 0.8, now=19.0)
    assert bar == 5000.0, "only two long turns fit: every other request is spilled"


def test_a_day_window_is_paced_over_the_day():
    d = demand([float(g) for g in range(1, 61)], every_s=1.0)
    # 14,400 a day is 10 a minute: of 60 requests a minute, the 10 that gain most keep the lane
    assert d.bar_ms(room(remaining=100, limit=14_400, name="requests-day", span_s=86_400.0), 0.8, now=59.0) == 50.0


GROQ_LOW = [(b"x-ratelimit-limit-requests", b"14400"), (b"x-ratelimit-remaining-requests", b"1000"),
            (b"x-ratelimit-reset-requests", b"22h13m20s")]


@pytest.mark.parametrize("provider, bar", [("groq", 50.0), ("openai", 0.0)])
def test_groqs_requests_window_is_paced_as_a_day_openais_as_a_minute(provider, bar):
    """The same header names: Groq's is 14,400 a day (10 a minute), OpenAI's 14,400 a minute (no bar)."""
    live = RoutingState()
    live.headroom.learn("lane", 200, GROQ_LOW, now=0.0, provider=provider)
    d = demand([float(g) for g in range(1, 61)], every_s=1.0)
    assert d.bar_ms(live.headroom.headroom("lane"), 0.8, now=59.0) == bar


def test_demand_older_than_the_history_is_forgotten():
    d = demand([float(g) for g in range(100, 6100, 100)], every_s=1.0)
    assert d.bar_ms(room(remaining=10), 0.8, now=200.0) == 0.0


def test_a_cold_start_is_not_read_as_a_flood():
    # 12 requests in the first 6 s: counted over 15 s, not 6 (which would let only 3.75 through)
    d = demand([100.0] * 4 + [2000.0] * 8, every_s=0.5)
    assert d.bar_ms(room(remaining=20), 0.8, now=5.5) == 100.0  # 8.5 fit: the eight 2 s gains keep the lane


PACED = "    spill: {reserve_fraction: 0.8, reserve_pace: true}\n"
FIXED = "    spill: {reserve_fraction: 0.8, reserve_min_gain_ms: 4000}\n"
SIZED = "    spill: {reserve_fraction: 0.8, reserve_min_gain_ms: 4000, reserve_sized: true}\n"


def low_wafer(live: RoutingState) -> None:
    live.headroom.learn("wafer", 200, [(b"x-ratelimit-limit-requests", b"30"), (b"x-ratelimit-remaining-requests", b"10"),
                                       (b"x-ratelimit-reset-requests", b"1m40s")], now=0.0)


@pytest.mark.parametrize("spill, first", [(PACED, "wafer"), (FIXED, "gpu"), (SIZED, "wafer")])
def test_routing_spills_for_the_reserve_only_when_the_demand_would_not_fit(spill, first):
    """The fixed bar spills a 200-token turn (gain ~2.6 s) although the lane's quota would serve it;
    paced or sized, the turn keeps the lane (seed 4242: unsized, the lane served 39% of the turns)."""
    pol, live = probed_policy(spill), RoutingState()
    low_wafer(live)
    for i in range(5):  # a trickle of demand: 5 requests in 10 s
        deps, _, _ = order_candidates(pol.routes["r"], pol.deployments, request(200), NO_HINTS, live, float(2 * i))
    assert deps[0].name == first


def test_the_sized_bar_keeps_what_the_requests_above_it_are_expected_to_need():
    pol, live = probed_policy(SIZED), RoutingState()
    low_wafer(live)  # 10 of 30 left
    for i in range(2):  # two long turns (gain ~20 s) in 15 s: 8 a minute, within the 9 a short turn would leave
        deps, _, _ = order_candidates(pol.routes["r"], pol.deployments, request(1500), NO_HINTS, live, float(i))
        assert deps[0].name == "wafer"
    deps, _, _ = order_candidates(pol.routes["r"], pol.deployments, request(200), NO_HINTS, live, 2.0)
    assert deps[0].name == "wafer"
    order_candidates(pol.routes["r"], pol.deployments, request(1500), NO_HINTS, live, 3.0)  # a third: 12 a minute
    deps, reason, spilled = order_candidates(pol.routes["r"], pol.deployments, request(200), NO_HINTS, live, 4.0)
    assert deps[0].name == "gpu" and reason.endswith("spill:wafer=reserve") and spilled == {"wafer"}


def test_demand_above_the_bar_is_sized_per_window():
    d = Demand()
    for i in range(3):
        d.add(float(i), 5000.0, 8000)  # three long turns in 15 s: 12 requests, 96k tokens a minute
    assert d.kept_for(room(remaining=13), 3000.0, 1000, 0.8, now=3.0) is False  # 12 left after this one
    assert d.kept_for(room(remaining=12), 3000.0, 1000, 0.8, now=3.0) is True
    tokens = room(remaining=40_000, limit=60_000, kind="tokens", name="tokens")
    assert d.kept_for(tokens, 3000.0, 1000, 0.8, now=3.0) is True
    assert d.kept_for(room(remaining=12), 6000.0, 1000, 0.8, now=3.0) is False, "nobody above a higher bar"
    assert d.kept_for(room(remaining=12), 3000.0, 1000, 0.8, now=100.0) is False, "a minute later: forgotten"


def test_paced_routing_keeps_the_lane_for_the_long_turns_under_a_flood():
    pol, live = probed_policy(PACED), RoutingState()
    low_wafer(live)
    reasons = []
    for i in range(60):  # 60 a minute asked of a 30-a-minute lane; every third a long turn
        req = request(1500 if i % 3 == 0 else 100)
        deps, _, spilled = order_candidates(pol.routes["r"], pol.deployments, req, NO_HINTS, live, float(i))
        reasons.append((i % 3 == 0, deps[0].name, spilled))
    late = reasons[20:]
    assert all(name == "wafer" for long, name, _ in late if long), "every long turn keeps the fast lane"
    assert all(name == "gpu" and spilled == {"wafer"} for long, name, spilled in late if not long)
