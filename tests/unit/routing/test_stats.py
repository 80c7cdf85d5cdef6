"""Statistics that forget: time-decayed averages, fresh quantiles, decayed peer weights, output sizes."""
from __future__ import annotations

import time

import pytest

from proxy.call import DEFAULT_OUTPUT_TOKENS, Outcome
from proxy.config.schema import Learning, Priors
from proxy.routing.stats import DeploymentStats, LatencyStats, Sketch
from proxy.upstream.scan import StreamScanner

PRIORS = Priors(ttft_ms=60, tokens_per_s=1500)
LEARNING = Learning(half_life_s=10, probe_interval_s=3)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wafer() -> tuple[Clock, LatencyStats, DeploymentStats]:
    """A fake clock, statistics on it, and the wafer lane's (half-life 10 s)."""
    clock = Clock()
    stats = LatencyStats(clock)
    return clock, stats, stats.get("wafer", LEARNING)


def served(stats: LatencyStats, name: str, ttft_ms: float, output_tokens: int = 100, route: str = "r",
           reason: str = "latency", input_tokens: int = 100) -> None:
    stats.started(name)
    stats.finished(Outcome("x", "chat", route, "k", None, deployment=name, reason=reason, status=200, stream=True,
                           input_tokens=input_tokens, output_tokens=output_tokens, upstream_started=1.0,
                           first_token_at=1.0 + ttft_ms / 1000, finished=2.0))


def test_a_sample_after_a_quiet_spell_outweighs_what_was_learnt_long_ago():
    clock, stats, lane = wafer()
    for _ in range(20):
        served(stats, "wafer", 3000)
    clock.now = 30.0  # three half-lives later
    served(stats, "wafer", 60)
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(60 + 2940 / 8)
    served(stats, "wafer", 60)  # back to back: at least ALPHA of the way, never stuck
    assert lane.estimate(PRIORS, 100).ttft_ms < 60 + 2940 / 8 * 0.8 + 1


def test_quantiles_use_fresh_samples_only():
    sketch = Sketch()
    for at in range(10):
        sketch.add(5000.0, at)
    for at in range(10, 20):
        sketch.add(60.0, at)
    assert sketch.quantile(0.95) == 5000.0
    assert sketch.quantile(0.95, since=10) == 60.0
    assert sketch.quantile(0.95, since=25) is None
    assert sketch.quantile(0.95, since=0) == 5000.0, "the cached sort follows the window asked for"


def test_the_slo_tail_follows_what_other_replicas_see():
    """Item 7: the percentile used to be this replica's own whenever it had samples."""
    clock, stats, lane = wafer()
    for _ in range(4):
        served(stats, "wafer", 60)
    assert lane.estimate(PRIORS, 100, percentile=95).ttft_ms == pytest.approx(60)
    stats.merge_peers([{"wafer": {"t": [[3000.0, 40.0], None, None, None], "d": [None] * 4, "e": [0.0, 40.0]}}])
    tail = lane.estimate(PRIORS, 100, percentile=95).ttft_ms
    assert tail > 2000, "peers saw the lane slow down: the SLO check sees it too"


def test_peer_weight_decays_with_age():
    clock = Clock()
    stats = LatencyStats(clock)
    for _ in range(10):
        served(stats, "wafer", 100)
    lane = stats.get("wafer", LEARNING)
    fresh = lane.summary()["t"][0]
    clock.now = 20.0
    old = lane.summary()["t"][0]
    assert fresh == pytest.approx((100.0, 10.0)) and old == pytest.approx((100.0, 2.5))


def test_errors_forget_too():
    clock, stats, lane = wafer()
    for _ in range(8):
        stats.started("wafer")
        stats.failed_before_response("wafer")
    assert lane.estimate(PRIORS, 100).error_rate > 0.5
    clock.now = 40.0
    served(stats, "wafer", 60)
    assert lane.estimate(PRIORS, 100).error_rate < 0.1


def test_probe_due_once_per_interval_without_fresh_samples():
    clock, stats, lane = wafer()
    served(stats, "wafer", 3000)
    assert not lane.probe_due(100, 1.0)
    assert lane.probe_due(100, 3.0)
    lane.probed_at = 3.0
    assert not lane.probe_due(100, 5.0) and lane.probe_due(100, 6.0)
    assert not stats.get("gpu", Learning(probe_interval_s=0)).probe_due(100, 1e9)


def test_expected_output_is_the_requests_own_bound_else_the_routes_p90():
    stats = LatencyStats()
    assert stats.expected_output_tokens("r", None) == DEFAULT_OUTPUT_TOKENS
    for tokens in range(10, 110, 10):
        served(stats, "wafer", 60, output_tokens=tokens)
    assert stats.expected_output_tokens("r", None) == 100
    assert stats.expected_output_tokens("r", 1000) == 1000, "a lane's average never caps the request's own bound"
    assert stats.expected_output_tokens("other", None) == DEFAULT_OUTPUT_TOKENS


@pytest.mark.parametrize("reason", ["latency;probe:wafer", "probe:wafer=idle"])
def test_a_probe_that_finds_a_demoted_lane_fast_again_restarts_its_figures(reason):
    """Averaged in, one probe would move a 3000 ms figure a fifth of the way: a dozen probes to undo a demotion."""
    clock, stats, lane = wafer()
    for _ in range(20):
        served(stats, "wafer", 3000)
        served(stats, "wafer", 3000, input_tokens=20_000)  # a long-prompt bucket, demoted too
    clock.now = 1.0
    served(stats, "wafer", 60, reason=reason)
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(60)
    assert lane.estimate(PRIORS, 20_000).ttft_ms == pytest.approx(60), "no bucket keeps the figure that demoted it"


@pytest.mark.parametrize("reason, ttft_ms", [("latency", 60), ("latency;probe:gpu", 60), ("probe:wafer=idle", 2000)])
def test_other_samples_are_averaged_in(reason, ttft_ms):
    """A client request (or a probe of another lane) is one sample; a probe not much faster than the figure is one too."""
    clock, stats, lane = wafer()
    for _ in range(20):
        served(stats, "wafer", 3000)
    clock.now = 1.0
    served(stats, "wafer", ttft_ms, reason=reason)
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(3000 + 0.2 * (ttft_ms - 3000), rel=0.01)


def test_two_first_tokens_in_a_row_far_off_the_figure_restart_it():
    """Seed 606 (bench/scenario.py --degrade 15:35): after two 3 s first tokens a 60 ms figure read 1.3 s
    averaged in, so the next short turn went to the slowed lane (3.2 s) instead of the GPU lane (2.5 s)."""
    clock, stats, lane = wafer()
    for _ in range(10):
        served(stats, "wafer", 60)
    clock.now = 1.0
    served(stats, "wafer", 3000)
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(60 + 0.2 * 2940), "one odd sample is averaged in"
    served(stats, "wafer", 60)
    served(stats, "wafer", 3000)
    assert lane.estimate(PRIORS, 100).ttft_ms < 1500, "an odd sample between ordinary ones starts no run"
    served(stats, "wafer", 3000)
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(3000), "two in a row: the lane changed"
    served(stats, "wafer", 60)
    served(stats, "wafer", 70)
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(65), "and back, without a probe"
    served(stats, "wafer", 3000)
    served(stats, "wafer", 10)  # one slower, one faster: no run
    assert 60 < lane.estimate(PRIORS, 100).ttft_ms < 1000


def test_a_slowdown_seen_in_one_prompt_size_is_the_lanes():
    """Seed 606: two 3 s first tokens of 1-3k-token prompts restarted their bucket; the next short turn,
    in the bucket below, still read 60 ms and went to the slowed lane."""
    clock, stats, lane = wafer()
    for _ in range(10):
        served(stats, "wafer", 200, input_tokens=3000)
        served(stats, "wafer", 60)
    for _ in range(2):
        served(stats, "wafer", 3000, input_tokens=3000)
    assert lane.estimate(PRIORS, 3000).ttft_ms == pytest.approx(3000)
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(60 + 2800), "the same 2.8 s delay"
    for _ in range(2):
        served(stats, "wafer", 60, input_tokens=3000)
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(2860), "a recovery moves only its bucket (probes do the rest)"


def test_a_wait_far_past_the_figure_predicts_twice_the_wait():
    """Seed 606: a stream kept 2.2 s by a lane slowed to 3 s, read as a bare lower bound, still put the
    next short turn on that lane (2.3 s predicted, 3.2 s served) rather than the GPU lane (2.6 s)."""
    clock, stats, lane = wafer()
    for _ in range(10):
        served(stats, "wafer", 100)
    usual = StreamScanner(time.perf_counter() - 0.15)  # within 2x of the figure: only a lower bound
    stats.awaiting("wafer", usual, 100)
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(150, rel=0.2)
    stats.answered("wafer", usual)
    stuck = StreamScanner(time.perf_counter() - 2.2)
    stats.awaiting("wafer", stuck, 100)
    assert lane.estimate(PRIORS, 100).ttft_ms >= 4400
    stats.answered("wafer", stuck)
    served(stats, "wafer", 100, input_tokens=3000)  # the longer prompts' bucket: 100 ms too
    longer = StreamScanner(time.perf_counter() - 2.2)
    stats.awaiting("wafer", longer, 3000)
    assert lane.estimate(PRIORS, 100).ttft_ms >= 4400, "far past its own bucket's figure: the lane slowed, for every prompt"


def test_a_stream_still_waiting_for_its_first_token_bounds_the_lanes_ttft_from_below():
    clock, stats, lane = wafer()
    for _ in range(10):
        served(stats, "wafer", 100)
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(100)
    stuck = StreamScanner(time.perf_counter() - 3.0)  # sent 3 s ago, no token yet: the lane slowed down
    stats.awaiting("wafer", stuck, 100)
    assert lane.estimate(PRIORS, 100).ttft_ms >= 3000
    assert lane.estimate(PRIORS, 100, percentile=95).ttft_ms >= 3000
    # A long prompt's wait says nothing about short prompts; a short prompt's wait bounds long ones.
    long_wait = StreamScanner(time.perf_counter() - 9.0)
    stats.awaiting("wafer", long_wait, 50_000)
    assert 3000 <= lane.estimate(PRIORS, 100).ttft_ms < 9000
    assert lane.estimate(PRIORS, 50_000).ttft_ms >= 9000
    stats.answered("wafer", long_wait)
    stuck.first_token_at = time.perf_counter()  # the token came: the wait is over, the sample comes with finish
    assert lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(100)
    stats.answered("wafer", stuck)
    stats.answered("wafer", stuck)  # twice (however the relay ended): harmless
    stats.answered("gpu", stuck)    # a lane never seen: harmless
    assert lane.awaiting == {} and lane.estimate(PRIORS, 100).ttft_ms == pytest.approx(100)


def test_no_probe_is_due_while_a_stream_of_such_a_prompt_still_waits_for_its_first_token():
    clock, stats, lane = wafer()
    clock.now = 100.0
    assert lane.probe_due(100, clock.now)  # never measured: a probe is due
    waiting = StreamScanner(time.perf_counter() - 0.5)
    stats.awaiting("wafer", waiting, 100)
    assert not lane.probe_due(100, clock.now)      # that stream is the probe: it will tell
    assert not lane.probe_due(50_000, clock.now)   # and it bounds longer prompts too
    stats.answered("wafer", waiting)
    assert lane.probe_due(100, clock.now)
    long_prompt = StreamScanner(time.perf_counter() - 0.5)
    stats.awaiting("wafer", long_prompt, 50_000)
    assert lane.probe_due(100, clock.now)  # a long prompt's wait says nothing about short ones
