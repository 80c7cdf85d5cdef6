"""Live latency statistics per deployment and prompt-size bucket, measured by this process.

The router reads these on every request, so a read is a few attribute lookups: EWMAs are
updated when a request finishes, and a quantile is computed (sorting at most 64 samples)
only when it is asked for after new samples arrived. A deployment with no samples yet is
predicted from the priors in the policy, so a cold proxy routes sensibly from the first
request.
"""
from __future__ import annotations

from dataclasses import dataclass

from proxy.call import Outcome
from proxy.config.schema import Priors

# Prompt-size bucket upper bounds in tokens: short turns and long agentic contexts behave differently.
BUCKETS = (1024, 8192, 32768)
ALPHA = 0.2            # EWMA weight of a new sample
ERROR_ALPHA = 0.1      # error rate moves slower: one failure should not flip the route
SKETCH_SIZE = 64       # samples kept per quantile sketch
DEFAULT_OUTPUT_TOKENS = 256


def bucket_of(input_tokens: int) -> int:
    for index, bound in enumerate(BUCKETS):
        if input_tokens <= bound:
            return index
    return len(BUCKETS)


class Sketch:
    """The last SKETCH_SIZE samples in a ring; quantiles sort them lazily, once per change."""

    __slots__ = ("_ring", "_next", "_sorted")

    def __init__(self) -> None:
        self._ring: list[float] = []
        self._next = 0
        self._sorted: list[float] | None = None

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, value: float) -> None:
        if len(self._ring) < SKETCH_SIZE:
            self._ring.append(value)
        else:
            self._ring[self._next] = value
            self._next = (self._next + 1) % SKETCH_SIZE
        self._sorted = None

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile, ``q`` in [0, 1]; the sketch must not be empty."""
        ordered = self._sorted
        if ordered is None:
            ordered = self._sorted = sorted(self._ring)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Metric:
    """EWMA plus sketch of one measure (TTFT ms or decode tokens/s) in one bucket."""

    __slots__ = ("ewma", "sketch")

    def __init__(self) -> None:
        self.ewma: float | None = None
        self.sketch = Sketch()

    def add(self, value: float) -> None:
        self.ewma = value if self.ewma is None else self.ewma + ALPHA * (value - self.ewma)
        self.sketch.add(value)


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the router expects from one deployment for one request."""

    ttft_ms: float
    tokens_per_s: float
    in_flight: int
    error_rate: float
    warm: bool  # False: priors only, nothing measured yet


class DeploymentStats:
    """Everything measured about one deployment by this process."""

    __slots__ = ("ttft", "decode", "error_rate", "in_flight", "requests", "errors", "output_ewma",
                 "peer_ttft", "peer_decode", "peer_errors")

    def __init__(self) -> None:
        self.ttft = [Metric() for _ in range(len(BUCKETS) + 1)]
        self.decode = [Metric() for _ in range(len(BUCKETS) + 1)]
        self.error_rate = 0.0
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.output_ewma: float | None = None
        # Other replicas' figures per bucket: (mean, samples), from proxy.routing.share; None when alone.
        self.peer_ttft: list[tuple[float, int] | None] | None = None
        self.peer_decode: list[tuple[float, int] | None] | None = None
        self.peer_errors: tuple[float, int] | None = None

    def estimate(self, priors: Priors, input_tokens: int, percentile: float | None = None) -> Estimate:
        """EWMA (or, with ``percentile``, the pessimistic quantile) in the prompt's bucket.

        An empty bucket borrows from the nearest measured bucket; other replicas' means are
        blended in by sample count (a quantile is this replica's own when it has one); priors
        only when nobody has measured the deployment yet. A slow decode is the low quantile
        of tokens/s, not the high one.
        """
        index = bucket_of(input_tokens)
        q = None if percentile is None else percentile / 100.0
        ttft_ms, warm_t = _figure(self.ttft, self.peer_ttft, index, q, priors.ttft_ms)
        rate, warm_d = _figure(self.decode, self.peer_decode, index, None if q is None else 1.0 - q, priors.tokens_per_s)
        error_rate = self.error_rate
        if self.peer_errors is not None:
            mine = min(self.requests, SKETCH_SIZE)
            rate_peers, weight = self.peer_errors
            error_rate = (error_rate * mine + rate_peers * weight) / (mine + weight) if mine + weight else error_rate
        return Estimate(ttft_ms, max(rate, 1e-3), self.in_flight, error_rate, warm_t or warm_d)

    def summary(self) -> dict[str, object]:
        """What other replicas need from this one (see proxy.routing.share)."""
        return {
            "t": [None if m.ewma is None else (m.ewma, len(m.sketch)) for m in self.ttft],
            "d": [None if m.ewma is None else (m.ewma, len(m.sketch)) for m in self.decode],
            "e": (self.error_rate, min(self.requests, SKETCH_SIZE)),
        }

    def record(self, outcome: Outcome) -> None:
        """Learn from a finished request: TTFT and decode rate from streams, errors from status."""
        self.requests += 1
        failed = outcome.status == 429 or outcome.status >= 500
        if failed:
            self.errors += 1
        self.error_rate += ERROR_ALPHA * ((1.0 if failed else 0.0) - self.error_rate)
        if failed or outcome.status != 200:
            return
        index = bucket_of(outcome.input_tokens)
        if outcome.output_tokens:
            out = float(outcome.output_tokens)
            self.output_ewma = out if self.output_ewma is None else self.output_ewma + ALPHA * (out - self.output_ewma)
        first = outcome.first_token_at
        if first is not None and outcome.upstream_started:
            self.ttft[index].add((first - outcome.upstream_started) * 1000.0)
            decode_s = outcome.finished - first
            if outcome.output_tokens > 1 and decode_s > 0:
                self.decode[index].add((outcome.output_tokens - 1) / decode_s)


def _figure(local: list[Metric], peers: list[tuple[float, int] | None] | None, index: int, q: float | None,
            prior: float) -> tuple[float, bool]:
    """(value, measured) for one measure: local EWMA blended with peers, or a local quantile, or the prior."""
    metric = _nearest(local, index)
    peer = _nearest_peer(peers, index) if peers is not None else None
    if metric is None:
        return (prior, False) if peer is None else (peer[0], True)
    if q is not None:
        return metric.sketch.quantile(q), True
    if peer is None:
        return metric.ewma, True
    mine = len(metric.sketch)
    return (metric.ewma * mine + peer[0] * peer[1]) / (mine + peer[1]), True


def _nearest_peer(peers: list[tuple[float, int] | None], index: int) -> tuple[float, int] | None:
    for distance in range(len(peers)):
        for other in (index - distance, index + distance):
            if 0 <= other < len(peers) and peers[other] is not None:
                return peers[other]
    return None


def _pool(figures: list[tuple[float, int] | None]) -> tuple[float, int] | None:
    """Sample-weighted mean of several replicas' (mean, samples)."""
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
    """Per-deployment statistics, kept across policy reloads (keyed by deployment name)."""

    def __init__(self) -> None:
        self._by_name: dict[str, DeploymentStats] = {}

    def get(self, name: str) -> DeploymentStats:
        stats = self._by_name.get(name)
        if stats is None:
            stats = self._by_name[name] = DeploymentStats()
        return stats

    def started(self, name: str) -> None:
        self.get(name).in_flight += 1

    def finished(self, outcome: Outcome) -> None:
        """Observer for ProxyState.finish: ends the in-flight count and learns from the outcome."""
        if outcome.deployment is None:
            return
        stats = self.get(outcome.deployment)
        stats.in_flight = max(0, stats.in_flight - 1)
        stats.record(outcome)

    def failed_before_response(self, name: str) -> None:
        """A candidate that errored or was skipped after sending: not in flight, counted as an error."""
        stats = self.get(name)
        stats.in_flight = max(0, stats.in_flight - 1)
        stats.requests += 1
        stats.errors += 1
        stats.error_rate += ERROR_ALPHA * (1.0 - stats.error_rate)

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


def _pair(value: list | None) -> tuple[float, int] | None:
    return None if value is None else (float(value[0]), int(value[1]))
