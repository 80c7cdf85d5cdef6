"""Order a route's candidates for one request: strategy, SLO, hints, quota headroom, breakers.

``order_candidates`` is what ``Router.dispatch`` calls before trying candidates in turn.
It returns every candidate (never drops one for being slow, short of quota or failing:
those move to the back, so the request still has somewhere to go) except those a client's
``x-laneway-max-cost-usd`` rules out or that cannot take the request at all (its context window,
its input modalities: see ``capability``), and a short machine-readable reason:

    <strategy>[;capability:<name>=context|image|audio][;slo-miss][;hint:reasoning=high][;probe:<name>][;hint:lane=<tag>][;spill:<name>=requests|tokens|reserve][;breaker:<name>=open]

where <strategy> is ``primary`` for the ordered ``fallback`` strategy.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from proxy.call import ModelRequest
from proxy.config.schema import Deployment, Route, Spill
from proxy.errors import InvalidRequest
from proxy.limits.headroom import Headroom
from proxy.pricing import price_of
from proxy.routing.capability import explain, unable, wants_deep_reasoning
from proxy.routing.hints import Hints
from proxy.routing.live import RoutingState
from proxy.routing.reserve import Demand
from proxy.routing.stats import PROBE_WHEN_SLOWER


class Prediction:
    """Predicted times (ms) and, when asked for, cost (USD; inf when the model has no known price).

    ``prior_ms``: the same request predicted from the deployment's priors alone (what it should
    do), against which a lane demoted by its measurements is judged for a probe.
    """

    __slots__ = ("total_ms", "slo_total_ms", "meets", "cost_usd", "prior_ms")

    def __init__(self, total_ms: float, slo_total_ms: float, meets: bool, cost_usd: float | None,
                 prior_ms: float) -> None:
        self.total_ms = total_ms
        self.slo_total_ms = slo_total_ms
        self.meets = meets
        self.cost_usd = cost_usd
        self.prior_ms = prior_ms


def predict(dep: Deployment, route: Route, req: ModelRequest, hints: Hints, live: RoutingState,
            with_cost: bool = False) -> Prediction:
    """Completion time = TTFT + expected output tokens / decode rate + queueing, inflated by the error rate.

    Expected output is the route's one estimate (``LatencyStats.expected_output_tokens``: the
    request's max_tokens, else the route's recent answers at p90). The expected (blended EWMA)
    figure ranks candidates; the route's SLO (and the client's max-latency hint) is checked at
    the SLO's percentile, so a deployment with a long tail can miss it. Cost comes from the
    price catalogue (policy `prices:` over litellm's), priced now.
    """
    stats = live.stats.get(dep.name, dep.learning)
    tokens_in = req.input_estimate
    out = live.stats.expected_output_tokens(route.name, req.max_output_tokens)
    priors = dep.priors
    mean = stats.estimate(priors, tokens_in)
    total = _completion_ms(mean.ttft_ms, mean.tokens_per_s, out, mean.in_flight, priors.concurrency) * (1.0 + mean.error_rate)
    meets = True
    slo_total = total
    slo = route.slo
    if slo is not None or hints.max_latency_ms is not None:
        tail = stats.estimate(priors, tokens_in, slo.percentile if slo is not None else 95.0)
        slo_total = _completion_ms(tail.ttft_ms, tail.tokens_per_s, out, tail.in_flight, priors.concurrency)
        if slo is not None:
            meets = (
                (slo.ttft_ms is None or tail.ttft_ms <= slo.ttft_ms)
                and (slo.tokens_per_s is None or tail.tokens_per_s >= slo.tokens_per_s)
                and (slo.total_ms is None or slo_total <= slo.total_ms)
            )
        if hints.max_latency_ms is not None and slo_total > hints.max_latency_ms:
            meets = False
    cost = None
    if with_cost:
        price = price_of(dep, tokens_in, int(out))
        cost = math.inf if price is None else float(price)
    prior = _completion_ms(priors.ttft_ms, priors.tokens_per_s, out, mean.in_flight, priors.concurrency)
    return Prediction(total, slo_total, meets, cost, prior)


def _completion_ms(ttft_ms: float, tokens_per_s: float, out: float, in_flight: int, concurrency: int) -> float:
    service = ttft_ms + out * 1000.0 / tokens_per_s
    queued = in_flight + 1 - concurrency
    return service if queued <= 0 else service * (1.0 + queued / concurrency)


class Ordering(NamedTuple):
    """What ``order_candidates`` decided for one request.

    ``spilled``: the candidates moved back for quota (short of requests or tokens, or kept in
    reserve for requests that gain more). Fallback may still reach them; a hedge must not
    start one (``hedge.hedged_dispatch``), or a slow first attempt would spend the quota the
    spill was keeping.
    """

    candidates: list[Deployment]
    reason: str
    spilled: frozenset[str]


def order_candidates(
    route: Route, deployments: Mapping[str, Deployment], req: ModelRequest, hints: Hints, live: RoutingState, now: float
) -> Ordering:
    """Candidates in the order to try them, the reason for the first one, and which were spilled."""
    order = [deployments[name] for name in route.candidates]
    strategy = route.strategy
    notes: list[str] = []
    unfit = unable(order, req)
    if unfit:
        order = _capable(order, unfit, req, route, notes)
    predictions: dict[str, Prediction] | None = None
    needs_prediction = (
        strategy in ("latency", "cost") or route.slo is not None or hints.max_latency_ms is not None
        or hints.max_cost_usd is not None or route.spill.reserve_fraction > 0
    )
    if needs_prediction:
        with_cost = strategy == "cost" or hints.max_cost_usd is not None
        predictions = {dep.name: predict(dep, route, req, hints, live, with_cost) for dep in order}
    if hints.max_cost_usd is not None:
        order = _within_budget(order, predictions, hints.max_cost_usd, route)
    if strategy == "latency":
        order.sort(key=lambda d: predictions[d.name].total_ms)
    elif strategy == "cost":
        order.sort(key=lambda d: (predictions[d.name].cost_usd, predictions[d.name].total_ms))
    elif strategy == "weighted":
        order = _weighted(order, route.weights, live)
    if predictions is not None:
        meeting = [d for d in order if predictions[d.name].meets]
        if len(meeting) < len(order):
            if not meeting:
                notes.append("slo-miss")
                if strategy == "cost":  # nothing is fast enough: at least be as fast as possible
                    order.sort(key=lambda d: predictions[d.name].total_ms)
            else:
                order = meeting + [d for d in order if not predictions[d.name].meets]
        order = _probe(order, req, predictions, live, now, notes)
    if wants_deep_reasoning(req):
        deep = [d for d in order if d.reasoning]
        if deep and deep[0] is not order[0]:
            order = deep + [d for d in order if not d.reasoning]
            notes.append("hint:reasoning=high")
    if hints.lane is not None:
        preferred = [d for d in order if d.hardware == hints.lane]
        if preferred:
            order = preferred + [d for d in order if d.hardware != hints.lane]
            notes.append(f"hint:lane={hints.lane}")
    spilled: frozenset[str] = frozenset()
    if len(order) > 1:
        order, spilled = _spill(order, route, req, predictions, live, now, notes)
        order = _skip_open_breakers(order, live, now, notes)
    base = "primary" if strategy == "fallback" else strategy
    return Ordering(order, base if not notes else base + ";" + ";".join(notes), spilled)


def _probe(order: list[Deployment], req: ModelRequest, predictions, live: RoutingState, now: float,
           notes: list[str]) -> list[Deployment]:
    """Send this request first to a lane its own measurements demoted, if one is due a probe.

    A demoted lane gets no samples, so without probes it would never be seen to recover. A lane
    qualifies when its priors predict it faster than the current first choice while what was
    measured predicts it PROBE_WHEN_SLOWER times slower than its priors; each gets at most one
    request per ``learning.probe_interval_s`` with no fresh sample in the request's prompt-size
    bucket: a small, bounded share of traffic.
    """
    first = predictions[order[0].name].total_ms
    for index, dep in enumerate(order[1:], 1):
        mine = predictions[dep.name]
        if mine.prior_ms < first and mine.total_ms > PROBE_WHEN_SLOWER * mine.prior_ms:
            stats = live.stats.get(dep.name)
            if stats.probe_due(req.input_estimate, now):
                stats.probed_at = now
                live.counters.probes += 1
                notes.append(f"probe:{dep.name}")
                return [dep, *order[:index], *order[index + 1:]]
    return order


def _capable(order: list[Deployment], unfit: dict[str, str], req: ModelRequest, route: Route,
             notes: list[str]) -> list[Deployment]:
    """Skip candidates that cannot take the request; none left: a 400 that says why for each."""
    kept = [d for d in order if d.name not in unfit]
    if not kept:
        reasons = "; ".join(explain(d, unfit[d.name], req) for d in order)
        raise InvalidRequest(
            f"No deployment of '{route.name}' can take this request: {reasons}.",
            code="unsupported_request",
            param="messages",
        )
    notes.extend(f"capability:{d.name}={unfit[d.name]}" for d in order if d.name in unfit)
    return kept


def _within_budget(order: list[Deployment], predictions, max_cost: float, route: Route) -> list[Deployment]:
    """Candidates whose estimated cost fits; one with no known price cannot be shown to fit."""
    kept = [d for d in order if predictions[d.name].cost_usd <= max_cost]
    if not kept:
        cheapest = min(predictions[d.name].cost_usd for d in order)
        estimate = f"the cheapest is estimated at ${cheapest:.6f}" if math.isfinite(cheapest) else "none has a known price"
        raise InvalidRequest(
            f"No deployment of '{route.name}' fits x-laneway-max-cost-usd={max_cost:g}; {estimate}. "
            "Raise the limit, lower max_tokens, or shorten the prompt.",
            code="max_cost_exceeded",
            param="x-laneway-max-cost-usd",
        )
    return kept


def _weighted(order: list[Deployment], weights: Mapping[str, float], live: RoutingState) -> list[Deployment]:
    """Draw the first candidate by weight (unlisted candidates weigh 1); the rest keep their order."""
    shares = [weights.get(d.name, 1.0) for d in order]
    total = sum(shares)
    if total <= 0:
        return order
    pick = live.rng.random() * total
    for index, share in enumerate(shares):
        pick -= share
        if pick < 0 and share > 0:
            return [order[index], *order[:index], *order[index + 1:]]
    return order


def _spill(order, route: Route, req: ModelRequest, predictions, live: RoutingState, now: float,
           notes: list[str]) -> tuple[list[Deployment], frozenset[str]]:
    """Move candidates short of quota behind the others, before their provider answers 429.

    Returns the new order and the names moved back (none when every candidate was short:
    then nothing moves and no candidate is kept from a hedge).
    """
    view = live.headroom
    rule = route.spill
    need = req.input_estimate + live.stats.expected_output_tokens(route.name, req.max_output_tokens)
    ready: list[Deployment] = []
    short: list[Deployment] = []
    for dep in order:
        room = view.headroom(dep.name)
        if room is None:
            why = None
        elif rule.min_requests == 0:  # "fall back only after a 429": only a 429's wait moves it back
            why = "requests" if now < room.exhausted_until else None
        else:
            why = room.short(need, rule.min_requests, rule.min_tokens, now)
        if room is not None:
            live.note_quota(dep.name, why)
        if why is None and room is not None and rule.reserve_fraction > 0:
            why = _reserve(dep, order, predictions, rule, room, live, need, now)
        if why is None:
            ready.append(dep)
        else:
            short.append(dep)
            notes.append(f"spill:{dep.name}={why}")
    if not short or not ready:
        if short:
            notes[:] = [n for n in notes if not n.startswith("spill:")]
        return order, frozenset()
    if short[0] is order[0]:
        live.counters.spills += 1
    return ready + short, frozenset(d.name for d in short)


def _reserve(dep: Deployment, order: list[Deployment], predictions, rule: Spill, room: Headroom, live: RoutingState,
             need: int, now: float) -> str | None:
    """Scarce quota goes to the requests that gain most from it: below ``reserve_fraction`` left,
    spill this one if it gains less than ``reserve_min_gain_ms`` over the next candidate (with
    ``reserve_sized``, only while the requests above that bar are expected to need what is left),
    and, with ``reserve_pace``, if it gains no more than the bar its lane's demand sets: see ``reserve``."""
    others = [predictions[d.name].total_ms for d in order if d is not dep]
    if not others:
        return None
    gain = min(others) - predictions[dep.name].total_ms
    demand = live.demand.get(dep.name)
    if demand is None:
        demand = live.demand[dep.name] = Demand()
    if gain > 0:
        demand.add(now, gain, need)
    if room.fraction_left(now) >= rule.reserve_fraction:
        return None
    if gain < rule.reserve_min_gain_ms and (
            not rule.reserve_sized or demand.kept_for(room, rule.reserve_min_gain_ms, need, rule.reserve_fraction, now)):
        return "reserve"
    return "reserve" if rule.reserve_pace and gain <= demand.bar_ms(room, rule.reserve_fraction, now) else None


def _skip_open_breakers(order: list[Deployment], live: RoutingState, now: float, notes: list[str]) -> list[Deployment]:
    breakers = live.breakers
    closed = [d for d in order if breakers.get(d.name, d.breaker).allows(now)]
    if not closed or len(closed) == len(order):
        return order
    opened = [d for d in order if d not in closed]
    if opened[0] is order[0]:
        live.counters.breaker_skips += 1
    notes.extend(f"breaker:{d.name}=open" for d in opened)
    return closed + opened
