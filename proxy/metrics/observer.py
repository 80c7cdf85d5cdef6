"""Turn each finished request's Outcome into metrics; runs once per request, so it stays cheap.

Labelled children are looked up once per label combination and cached (a dict hit per
request instead of prometheus-client's locked ``labels()`` per family). Every label value
comes from the policy (route, deployment, hardware, team) or a fixed set; the route
reason, written by the router from configured names, is parsed into bounded counters.

A request refused before any upstream answered touches ``laneway_requests_total`` only (with
``deployment="none"``, ``lane="none"``): no latency or token series is created for it, so no
placeholder lane shows up in latency legends or traffic shares.
"""
from __future__ import annotations

from collections.abc import Callable, Collection

from proxy.call import Outcome
from proxy.metrics import families as m

NONE = "none"
# Codes ops teams alert on get their own value; any other code collapses to its class.
_NAMED_STATUS = frozenset({200, 400, 401, 403, 404, 408, 413, 422, 429, 499, 500, 502, 503, 504})
_STATUS = {code: str(code) for code in _NAMED_STATUS}
_FAILURE_KINDS = frozenset({"connect", "timeout", "closed", "protocol"})
_SPILL_KINDS = frozenset({"requests", "tokens", "reserve", "concurrency", "limited"})
_MAX_REASONS = 512  # distinct route-reason strings remembered (bounded by policy size in practice)


def status_label(status: int) -> str:
    label = _STATUS.get(status)
    if label is None:
        label = f"{status // 100}xx" if 100 <= status < 600 else "other"
    return label


class _Children:
    """The labelled series one (route, deployment, lane, transport, endpoint, status, team) touches."""

    __slots__ = ("requests", "duration", "ttft", "decode", "added", "input", "output", "cached", "reasoning", "usage")

    def __init__(self, route: str, deployment: str, lane: str, transport: str, endpoint: str, status: str,
                 team: str, attempt: str, usage: list[int], answered: bool) -> None:
        self.requests = m.requests.labels(route, deployment, lane, status, transport, endpoint)
        self.usage = usage  # shared by every series of this (team, deployment): [input, cached, output, reasoning]
        if not answered:
            return  # refused before routing reached an upstream: only counted
        self.duration = m.request_duration.labels(route, deployment, lane, transport)
        self.ttft = m.ttft.labels(route, deployment, lane, transport)
        self.decode = m.decode_rate.labels(route, deployment, lane)
        self.added = m.added_latency.labels(transport, attempt)
        self.input = m.tokens.labels(route, deployment, lane, team, "input")
        self.output = m.tokens.labels(route, deployment, lane, team, "output")
        self.cached = m.tokens.labels(route, deployment, lane, team, "cached")
        self.reasoning = m.tokens.labels(route, deployment, lane, team, "reasoning")


class RequestMetrics:
    """The ``ProxyState`` observer: one call per finished request or WebSocket turn."""

    def __init__(self, deployments: Callable[[], Collection[str]]) -> None:
        self._children: dict[tuple, _Children] = {}
        self._reasons: dict[tuple[str, str], tuple] = {}
        self._deployments = deployments  # the live policy's names: the only ones a reason may turn into a label
        # (team, deployment) -> running token totals in this process, priced by the sampler off the hot path.
        self.usage: dict[tuple[str, str], list[int]] = {}

    def __call__(self, o: Outcome) -> None:
        reason = o.reason
        attempt = "fallback" if reason.startswith("fallback:") else "hedge" if reason.endswith("hedge-won") else "first"
        key = (o.route, o.deployment, o.hardware, o.transport, o.endpoint, o.status, o.team, attempt)
        c = self._children.get(key)
        if c is None:
            team, deployment = o.team or NONE, o.deployment or NONE
            usage = self.usage.setdefault((team, deployment), [0, 0, 0, 0])
            c = self._children[key] = _Children(
                o.route or NONE, deployment, o.hardware or NONE, o.transport, o.endpoint,
                status_label(o.status), team, attempt, usage, o.deployment is not None)
        if reason == "hedge-lost":  # the losing half of a hedged request: its tokens were still spent
            self._tokens(c, o)
            return
        c.requests.inc()
        if o.deployment is None:
            return  # refused before any upstream answered: counted, nothing else to measure
        if o.status == 429:  # the provider's own refusal, relayed
            m.upstream_rate_limited.labels(o.deployment).inc()
        if o.upstream_started:
            c.added.observe(o.upstream_started - o.started)
        c.duration.observe(o.finished - o.started)
        if o.first_token_at is not None:
            c.ttft.observe(o.first_token_at - o.started)
            decode_s = o.finished - o.first_token_at
            if o.output_tokens > 1 and decode_s > 0:
                c.decode.observe((o.output_tokens - 1) / decode_s)
        self._tokens(c, o)
        if ":" in reason or ";" in reason:
            for counter in self._reason_counters(o.route, reason):
                counter.inc()

    @staticmethod
    def _tokens(c: _Children, o: Outcome) -> None:
        usage = c.usage
        usage[0] += o.input_tokens
        usage[1] += o.cached_tokens
        usage[2] += o.output_tokens
        usage[3] += o.reasoning_tokens
        if o.input_tokens:
            c.input.inc(o.input_tokens)
        if o.output_tokens:
            c.output.inc(o.output_tokens)
        if o.cached_tokens:
            c.cached.inc(o.cached_tokens)
        if o.reasoning_tokens:
            c.reasoning.inc(o.reasoning_tokens)

    def _reason_counters(self, route: str, reason: str) -> tuple:
        found = self._reasons.get((route, reason))
        if found is None:
            found = tuple(self._parse_reason(route, reason))
            if len(self._reasons) >= _MAX_REASONS:
                self._reasons.clear()
            self._reasons[(route, reason)] = found
        return found

    def _parse_reason(self, route: str, reason: str):
        """``latency;spill:spark-wafer=tokens;breaker:x=open;hedge-won`` or ``fallback:spark-wafer=429,dead=limited``.

        A candidate our own limiter refused (``=limited``) was spilled, not failed.
        """
        known = self._deployments()
        if reason.startswith("fallback:"):
            for item in reason[len("fallback:"):].split(","):
                name, _, why = item.partition("=")
                if name not in known:
                    continue
                if why == "limited":
                    yield m.spills.labels(route, name, "limited")
                elif why == "429":
                    yield m.fallbacks.labels(route, name, "429")
                    yield m.upstream_rate_limited.labels(name)
                else:
                    yield m.fallbacks.labels(route, name, _failure_kind(why))
            return
        for note in reason.split(";"):
            if note == "hedge-won" or note == "hedged":
                yield m.hedges.labels(route, "hedge" if note == "hedge-won" else "primary")
                continue
            kind, _, rest = note.partition(":")
            name, _, why = rest.partition("=")
            if name not in known:
                continue
            if kind == "spill":
                yield m.spills.labels(route, name, why if why in _SPILL_KINDS else "other")
            elif kind == "breaker":
                yield m.breaker_skips.labels(route, name)


def _failure_kind(why: str) -> str:
    if why.isdigit():
        return "429" if why == "429" else f"{why[0]}xx"
    return why if why in _FAILURE_KINDS else "other"
