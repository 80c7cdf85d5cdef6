"""Live latency statistics per deployment and prompt-size bucket, measured by this process.

The router reads these on every request, so a read is a few attribute lookups: EWMAs are
updated when a request finishes, and a quantile is computed (sorting at most 64 samples)
only when it is asked for after new samples arrived. A deployment with no samples yet is
predicted from the priors in the policy, so a cold proxy routes sensibly from the first
request.

Everything forgets with time (``learning.half_life_s`` of the deployment): an old figure's
weight halves every half-life, so a sample arriving after a quiet spell moves the average
most of the way to itself; quantiles use only samples younger than two half-lives; the
weight other replicas give a figure decays the same way. A lane that was demoted gets no
samples of its own, so routing sends it a bounded trickle of probes (``probe_due``).

A stream still waiting for its first token is a sample too, a censored one: having waited
``w`` ms, the lane's time to first token is at least ``w`` for prompts no shorter than its
own. So a lane that slows down is seen at once, by the streams it is keeping waiting, not
seconds later when the first of them finally answers (``awaiting`` / ``answered``). A wait far
past its bucket's figure predicts twice the wait, for every prompt size (``_waited``), and two
first tokens in a row far off a figure restart it (``Metric``).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from proxy.call import DEFAULT_OUTPUT_TOKENS, Outcome
from proxy.config.schema import Learning, Priors
from proxy.upstream.scan import StreamScanner

# Prompt-size bucket upper bounds in tokens: short turns and long agentic contexts behave differently.
BUCKETS = (1024, 8192, 32768)
ALPHA = 0.2            # least EWMA weight of a new sample (a burst still moves the average)
ERROR_ALPHA = 0.1      # error rate moves slower: one failure should not flip the route
SKETCH_SIZE = 64       # samples kept per quantile sketch
FRESH_HALF_LIVES = 2.0  # quantiles use samples younger than this many half-lives
OUTPUT_QUANTILE = 0.9  # a route's expected output: this quantile of what it wrote lately
DEFAULT_LEARNING = Learning()
# A lane is demoted (and probed) when measured this many times slower than its priors predict;
# a probe answering this many times faster than the figure that demoted it ends the demotion.
PROBE_WHEN_SLOWER = 2.0
SHIFT_SAMPLES = 2      # odd first-token times in a row that restart a figure (see Metric)


def bucket_of(input_tokens: int) -> int:
    for index, bound in enumerate(BUCKETS):
        if input_tokens <= bound:
            return index
    return len(BUCKETS)


def _kept(age_s: float, half_life_s: float) -> float:
    """Share of an old figure's weight left after ``age_s``."""
    return 0.5 ** (max(0.0, age_s) / half_life_s)


class Sketch:
    """The last SKETCH_SIZE samples (value, time) in a ring; quantiles sort the fresh ones lazily,
    again only when a sample arrives or one ages out of the window asked for."""

    __slots__ = ("_ring", "_next", "_sorted", "_valid")

    def __init__(self) -> None:
        self._ring: list[tuple[float, float]] = []
        self._next = 0
        self._sorted: list[float] = []
        self._valid = (math.inf, -math.inf)  # ``since`` values the sorted list holds for: (lo, hi]

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, value: float, at: float = 0.0) -> None:
        if len(self._ring) < SKETCH_SIZE:
            self._ring.append((value, at))
        else:
            self._ring[self._next] = (value, at)
            self._next = (self._next + 1) % SKETCH_SIZE
        self._valid = (math.inf, -math.inf)

    def quantile(self, q: float, since: float = -math.inf) -> float | None:
        """Nearest-rank quantile (``q`` in [0, 1]) of samples taken at or after ``since``; None if none."""
        lo, hi = self._valid
        if not lo < since <= hi:
            fresh = [at for _, at in self._ring if at >= since]
            older = [at for _, at in self._ring if at < since]
            self._sorted = sorted(v for v, at in self._ring if at >= since)
            self._valid = (max(older, default=-math.inf), min(fresh, default=math.inf))
        ordered = self._sorted
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


class Unanswered:
    """A streamed request sent and not answered yet: to ``LatencyStats.awaiting`` what a relay's
    scanner is once the headers have come (a slowed provider may hold back even those: the
    scenario's degraded wafer lane does, so a wait counted from the relay saw nothing)."""

    __slots__ = ("started", "first_token_at")

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_token_at: float | None = None


Waiting = StreamScanner | Unanswered


class Metric:
    """Time-decayed EWMA, decayed sample weight and sketch of one measure in one bucket.

    With ``shifts`` (time to first token), SHIFT_SAMPLES samples in a row that are each
    PROBE_WHEN_SLOWER times off the figure they found, on the same side, mean the lane changed
    (a slowdown, a recovery without a probe): the figure restarts from them. Averaged in, two
    3000 ms first tokens move a 60 ms figure to 1300 ms, still 2x under the GPU lane's short
    answers, so short turns kept going to a lane 50x slower than before. One odd sample is
    averaged in as ever.
    """

    __slots__ = ("ewma", "weight", "at", "sketch", "shift")

    def __init__(self) -> None:
        self.ewma: float | None = None
        self.weight = 0.0      # samples behind the EWMA, each counted by what is left of it
        self.at = -math.inf    # when the last sample was taken
        self.sketch = Sketch()
        self.shift: tuple[float, list[float]] | None = None  # (the figure they found, the odd samples in a row)

    def add(self, value: float, now: float, half_life_s: float, shifts: bool = False) -> float:
        """Learn one sample; when a run restarted the figure, returns how far it is from the figure the run found."""
        jump = 0.0
        if self.ewma is None:
            self.ewma, self.weight = value, 1.0
        elif shifts and self._shifted(value):
            base, run = self.shift
            restart = sum(run) / len(run)
            jump = restart - base
            self.ewma, self.weight, self.shift = restart, float(len(run)), None
        else:
            kept = _kept(now - self.at, half_life_s)
            self.ewma += max(ALPHA, 1.0 - kept) * (value - self.ewma)
            self.weight = min(float(SKETCH_SIZE), self.weight * kept + 1.0)
        self.at = now
        self.sketch.add(value, now)
        return jump

    def _shifted(self, value: float) -> bool:
        """Whether ``value`` completes a run of SHIFT_SAMPLES odd samples on one side of the figure."""
        base, run = (self.ewma, []) if self.shift is None else self.shift
        if run and (run[0] > base) != (value > base):  # the other side: a run of its own
            base, run = self.ewma, []
        if base / PROBE_WHEN_SLOWER <= value <= base * PROBE_WHEN_SLOWER:
            self.shift = None
            return False
        run.append(value)
        self.shift = (base, run)
        return len(run) >= SHIFT_SAMPLES

    def weight_at(self, now: float, half_life_s: float) -> float:
        return self.weight * _kept(now - self.at, half_life_s)


class Estimate:
    """What the router expects from one deployment for one request."""

    __slots__ = ("ttft_ms", "tokens_per_s", "in_flight", "error_rate", "warm")

    def __init__(self, ttft_ms: float, tokens_per_s: float, in_flight: int, error_rate: float, warm: bool) -> None:
        self.ttft_ms = ttft_ms
        self.tokens_per_s = tokens_per_s
        self.in_flight = in_flight
        self.error_rate = error_rate
        self.warm = warm  # False: priors only, nothing measured yet


class DeploymentStats:
    """Everything measured about one deployment by this process."""

    __slots__ = ("ttft", "decode", "error_rate", "error_weight", "error_at", "in_flight", "requests", "errors",
                 "learning", "probed_at", "clock", "peer_ttft", "peer_decode", "peer_errors", "awaiting")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttft = [Metric() for _ in range(len(BUCKETS) + 1)]
        self.decode = [Metric() for _ in range(len(BUCKETS) + 1)]
        self.error_rate = 0.0
        self.error_weight = 0.0
        self.error_at = -math.inf
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.learning = DEFAULT_LEARNING  # the live policy's, set by LatencyStats.get
        self.probed_at = -math.inf        # when routing last sent it a probe
        self.clock = clock
        # Other replicas' figures per bucket: (mean, weight), from proxy.routing.share; None when alone.
        self.peer_ttft: list[tuple[float, float] | None] | None = None
        self.peer_decode: list[tuple[float, float] | None] | None = None
        self.peer_errors: tuple[float, float] | None = None
        # Streams relayed from this deployment now -> their prompt's bucket; those without a first
        # token yet bound the lane's TTFT from below (see the module docstring).
        self.awaiting: dict[Waiting, int] = {}

    def estimate(self, priors: Priors, input_tokens: int, percentile: float | None = None,
                 now: float | None = None) -> Estimate:
        """Blended EWMA (or, with ``percentile``, the pessimistic quantile) in the prompt's bucket.

        An empty bucket borrows from the nearest measured bucket; other replicas' means are
        blended in by decayed weight; a quantile is this replica's fresh samples' shape scaled
        to the blended mean (so what peers saw moves it too); priors only when nobody has
        measured the deployment yet. A slow decode is the low quantile of tokens/s.
        """
        now = self.clock() if now is None else now
        half_life = self.learning.half_life_s
        index = bucket_of(input_tokens)
        q = None if percentile is None else percentile / 100.0
        ttft_ms, warm_t = _figure(self.ttft, self.peer_ttft, index, q, priors.ttft_ms, now, half_life)
        if self.awaiting:
            ttft_ms = self._waited(index, ttft_ms)
        rate, warm_d = _figure(self.decode, self.peer_decode, index, None if q is None else 1.0 - q,
                               priors.tokens_per_s, now, half_life)
        error_rate = self.error_rate
        if self.peer_errors is not None:
            mine = self.error_weight * _kept(now - self.error_at, half_life)
            rate_peers, weight = self.peer_errors
            error_rate = (error_rate * mine + rate_peers * weight) / (mine + weight) if mine + weight else error_rate
        return Estimate(ttft_ms, max(rate, 1e-3), self.in_flight, error_rate, warm_t or warm_d)

    def _waited(self, index: int, ttft_ms: float) -> float:
        """``ttft_ms`` (bucket ``index``'s figure) raised by the streams still waiting for a first token.

        A wait within PROBE_WHEN_SLOWER times its own bucket's figure is a lower bound for prompts
        no shorter than its own, and nothing more. A longer one says the lane left its figures
        behind, and how far is not known yet: with no scale to go by, a wait seen part of the way
        through is as likely to be in its first half as its second, so its first token is expected
        at twice the wait so far, and every prompt size is expected that many times slower than
        its figure (a slowdown is the lane's, not one prompt's). As a bare lower bound, seed 606's
        short turn saw nothing of a 3 s first token kept waiting 2.2 s on a longer prompt and went
        to the slowed lane (3.2 s) instead of the GPU lane (2.6 s).
        """
        now = time.perf_counter()  # the scanners' clock
        raised = ttft_ms
        for scanner, bucket in self.awaiting.items():
            if scanner.first_token_at is not None:
                continue
            wait_ms = (now - scanner.started) * 1000.0
            if bucket <= index:
                own = _nearest(self.ttft, bucket)
                usual = ttft_ms if own is None else own.ewma
            else:  # a longer prompt: only its own bucket's figure tells a slow lane from a long prefill
                usual = self.ttft[bucket].ewma
                if usual is None:
                    continue
            if wait_ms > PROBE_WHEN_SLOWER * usual:
                raised = max(raised, ttft_ms * 2.0 * wait_ms / usual)
            elif bucket <= index:
                raised = max(raised, wait_ms)
        return raised

    def longest_wait_ms(self, index: int) -> float:
        """How long the longest-waiting stream of a prompt no longer than bucket ``index``'s has
        waited for its first token so far (0 when none is waiting)."""
        now = time.perf_counter()  # the scanners' clock
        oldest = now
        for scanner, bucket in self.awaiting.items():
            if bucket <= index and scanner.first_token_at is None and scanner.started < oldest:
                oldest = scanner.started
        return (now - oldest) * 1000.0

    def probe_due(self, input_tokens: int, now: float, interval: float | None = None) -> bool:
        """No sample in the prompt's bucket, no probe for ``interval`` (``learning.probe_interval_s``
        unless given: the idle prober asks with ``learning.idle_probe_s``) and no stream of such a
        prompt waiting for its first token."""
        if interval is None:
            interval = self.learning.probe_interval_s
        if interval <= 0:
            return False
        index = bucket_of(input_tokens)
        if self.awaiting and self.longest_wait_ms(index) > 0:
            return False  # a stream still waiting for its first token is the probe: it will tell
        metric = _nearest(self.ttft, index)
        last = max(self.probed_at, -math.inf if metric is None else metric.at)
        return now - last >= interval

    def summary(self, now: float | None = None) -> dict[str, object]:
        """What other replicas need from this one (see proxy.routing.share): means and decayed weights."""
        now = self.clock() if now is None else now
        half_life = self.learning.half_life_s
        return {
            "t": [None if m.ewma is None else (m.ewma, m.weight_at(now, half_life)) for m in self.ttft],
            "d": [None if m.ewma is None else (m.ewma, m.weight_at(now, half_life)) for m in self.decode],
            "e": (self.error_rate, self.error_weight * _kept(now - self.error_at, half_life)),
        }

    def record_error(self, failed: bool, now: float) -> None:
        kept = _kept(now - self.error_at, self.learning.half_life_s)
        self.error_rate += max(ERROR_ALPHA, 1.0 - kept) * ((1.0 if failed else 0.0) - self.error_rate)
        self.error_weight = min(float(SKETCH_SIZE), self.error_weight * kept + 1.0)
        self.error_at = now
        self.requests += 1
        if failed:
            self.errors += 1

    def record(self, outcome: Outcome) -> None:
        """Learn from a finished request: TTFT and decode rate from streams, errors from status."""
        now = self.clock()
        failed = outcome.status == 429 or outcome.status >= 500
        self.record_error(failed, now)
        if failed or outcome.status != 200:
            return
        index = bucket_of(outcome.input_tokens)
        first = outcome.first_token_at
        half_life = self.learning.half_life_s
        if first is not None and outcome.upstream_started:
            ttft_ms = (first - outcome.upstream_started) * 1000.0
            if f"probe:{outcome.deployment}" in outcome.reason:
                self._recovered(index, ttft_ms)
            jump = self.ttft[index].add(ttft_ms, now, half_life, shifts=True)
            if jump > 0:  # the lane slowed down, not one prompt size: the same delay for every other one
                for metric in self.ttft:
                    if metric is not self.ttft[index] and metric.ewma is not None:
                        metric.ewma += jump
                        metric.shift = None
            decode_s = outcome.finished - first
            if outcome.output_tokens > 1 and decode_s > 0:
                self.decode[index].add((outcome.output_tokens - 1) / decode_s, now, half_life)


    def _recovered(self, index: int, probe_ttft_ms: float) -> None:
        """A probe much faster than the figure that demoted the lane: that figure is history.

        Averaging it in would take a dozen probes to undo a demotion (each moves the average a
        fifth of the way), so a recovered lane would stay avoided for minutes; instead the lane's
        own speed figures restart from the probe, as a breaker closes on one good half-open
        probe. A lane still slow is demoted again by the next requests it serves.
        """
        seen = _nearest(self.ttft, index)
        if seen is not None and probe_ttft_ms * PROBE_WHEN_SLOWER < seen.ewma:
            self.ttft = [Metric() for _ in range(len(BUCKETS) + 1)]
            self.decode = [Metric() for _ in range(len(BUCKETS) + 1)]


def _figure(local: list[Metric], peers: list[tuple[float, float] | None] | None, index: int, q: float | None,
            prior: float, now: float, half_life_s: float) -> tuple[float, bool]:
    """(value, measured) for one measure: local EWMA blended with peers (scaled to a fresh local
    quantile when ``q`` is given), else the peers', else the prior."""
    metric = _nearest(local, index)
    peer = _nearest_peer(peers, index) if peers is not None else None
    if metric is None:
        return (prior, False) if peer is None else (peer[0], True)
    mean = metric.ewma
    if peer is not None:
        mine = metric.weight_at(now, half_life_s)
        mean = (metric.ewma * mine + peer[0] * peer[1]) / (mine + peer[1]) if mine + peer[1] > 0 else metric.ewma
    if q is None:
        return mean, True
    tail = metric.sketch.quantile(q, now - FRESH_HALF_LIVES * half_life_s)
    return (mean if tail is None else tail * mean / metric.ewma), True


def _nearest_peer(peers: list[tuple[float, float] | None], index: int) -> tuple[float, float] | None:
    for distance in range(len(peers)):
        for other in (index - distance, index + distance):
            if 0 <= other < len(peers) and peers[other] is not None:
                return peers[other]
    return None


def _pool(figures: list[tuple[float, float] | None]) -> tuple[float, float] | None:
    """Weighted mean of several replicas' (mean, decayed sample weight)."""
    present = [f for f in figures if f is not None and f[1] > 0]
    if not present:
        return None
    total = sum(n for _, n in present)
    return sum(mean * n for mean, n in present) / total, total


def _nearest(metrics: list[Metric], index: int) -> Metric | None:
    if metrics[index].ewma is not None:
        return metrics[index]
    for distance in range(1, len(metrics)):
        for other in (index - distance, index + distance):
            if 0 <= other < len(metrics) and metrics[other].ewma is not None:
                return metrics[other]
    return None


class LatencyStats:
    """Per-deployment statistics and per-route output sizes, kept across policy reloads (keyed by name)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_name: dict[str, DeploymentStats] = {}
        self._outputs: dict[str, Sketch] = {}  # route -> output tokens of its recent answers
        self.clock = clock

    def get(self, name: str, learning: Learning | None = None) -> DeploymentStats:
        """One deployment's statistics; ``learning`` (its policy settings) is kept for what follows."""
        stats = self._by_name.get(name)
        if stats is None:
            stats = self._by_name[name] = DeploymentStats(self.clock)
        if learning is not None and stats.learning is not learning:
            stats.learning = learning
        return stats

    def started(self, name: str) -> None:
        self.get(name).in_flight += 1

    def awaiting(self, name: str, scanner: Waiting, input_tokens: int) -> None:
        """A stream from ``name`` is being relayed; until ``answered``, a first token it has not
        had yet bounds the lane's TTFT from below."""
        self.get(name).awaiting[scanner] = bucket_of(input_tokens)

    def answered(self, name: str, scanner: Waiting) -> None:
        """The stream's relay is over (in its ``finally``: however it ended)."""
        stats = self._by_name.get(name)
        if stats is not None:
            stats.awaiting.pop(scanner, None)

    def finished(self, outcome: Outcome) -> None:
        """Observer for ProxyState.finish: ends the in-flight count and learns from the outcome."""
        if outcome.deployment is None:
            return
        stats = self.get(outcome.deployment)
        stats.in_flight = max(0, stats.in_flight - 1)
        stats.record(outcome)
        if outcome.status == 200 and outcome.output_tokens:
            sketch = self._outputs.get(outcome.route)
            if sketch is None:
                sketch = self._outputs[outcome.route] = Sketch()
            sketch.add(float(outcome.output_tokens))

    def expected_output_tokens(self, route: str, max_tokens: int | None) -> int:
        """Output tokens to expect from a request on ``route``: the one estimate every component uses.

        The request's own max_tokens when it names one (a prediction that holds at the client's
        bound is one it can rely on); else the route's recent answers at their 90th percentile;
        else proxy.call.DEFAULT_OUTPUT_TOKENS.
        """
        if max_tokens is not None:
            return max_tokens
        sketch = self._outputs.get(route)
        typical = None if sketch is None else sketch.quantile(OUTPUT_QUANTILE)
        return DEFAULT_OUTPUT_TOKENS if typical is None else int(typical)

    def failed_before_response(self, name: str) -> None:
        """A candidate that errored or was skipped after sending: not in flight, counted as an error."""
        stats = self.get(name)
        stats.in_flight = max(0, stats.in_flight - 1)
        stats.record_error(True, self.clock())

    def summary(self) -> dict[str, object]:
        return {name: stats.summary() for name, stats in self._by_name.items() if stats.requests}

    def merge_peers(self, summaries: list[dict]) -> None:
        """Replace the peer figures with these replicas' summaries (an empty list: we are alone)."""
        names = {name for summary in summaries for name in summary} | set(self._by_name)
        for name in names:
            stats = self.get(name)
            mine = [summary[name] for summary in summaries if name in summary]
            if not mine:
                stats.peer_ttft = stats.peer_decode = stats.peer_errors = None
                continue
            buckets = range(len(BUCKETS) + 1)
            stats.peer_ttft = [_pool([_pair(m["t"][b]) for m in mine]) for b in buckets]
            stats.peer_decode = [_pool([_pair(m["d"][b]) for m in mine]) for b in buckets]
            stats.peer_errors = _pool([_pair(m["e"]) for m in mine])

    def snapshot(self) -> dict[str, dict[str, float | int | None]]:
        """Plain numbers for /admin/policy and metrics exporters."""
        out: dict[str, dict[str, float | int | None]] = {}
        for name, stats in self._by_name.items():
            ttft = _nearest(stats.ttft, 0)
            decode = _nearest(stats.decode, 0)
            out[name] = {
                "in_flight": stats.in_flight,
                "requests": stats.requests,
                "errors": stats.errors,
                "error_rate": round(stats.error_rate, 4),
                "ttft_ms_ewma": None if ttft is None else round(ttft.ewma, 1),
                "tokens_per_s_ewma": None if decode is None else round(decode.ewma, 1),
            }
        return out


def routing_view(stats: LatencyStats, priors: Mapping[str, Priors]) -> dict[str, dict[str, float | bool | None]]:
    """Read-only, for /admin/policy: per deployment, this replica's own figures, the peers' pooled
    ones and the blend routing decides on (a short prompt's bucket; priors when nobody measured)."""
    out: dict[str, dict[str, float | bool | None]] = {}
    mine = stats.snapshot()
    for name, prior in priors.items():
        own = mine.get(name, {})
        figures = stats._by_name.get(name) or DeploymentStats()  # an unmeasured one is not added
        blend = figures.estimate(prior, 0)
        peer_ttft = None if figures.peer_ttft is None else _nearest_peer(figures.peer_ttft, 0)
        peer_decode = None if figures.peer_decode is None else _nearest_peer(figures.peer_decode, 0)
        out[name] = {
            "own_ttft_ms": own.get("ttft_ms_ewma"),
            "peers_ttft_ms": None if peer_ttft is None else round(peer_ttft[0], 1),
            "routed_ttft_ms": round(blend.ttft_ms, 1),
            "own_tokens_per_s": own.get("tokens_per_s_ewma"),
            "peers_tokens_per_s": None if peer_decode is None else round(peer_decode[0], 1),
            "routed_tokens_per_s": round(blend.tokens_per_s, 1),
            "routed_error_rate": round(blend.error_rate, 4),
            "measured": blend.warm,
        }
    return out


def _pair(value: list | None) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))
