"""One attempt at one candidate, and what routing hands back: the vocabulary of dispatch.

``Attempts.try_candidate`` is the single path every upstream call takes (plain fallback and
hedged legs alike): admit against the request's ticket, feed the breaker and the in-flight
count, send, learn the provider's headroom from the response, give back the deployment's
reservation if it failed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from proxy.call import DEFAULT_OUTPUT_TOKENS, ModelRequest, Outcome, UpstreamError, UpstreamResponse, Usage
from proxy.config.schema import Deployment
from proxy.limits.limiter import Ticket
from proxy.routing.failures import is_failure
from proxy.routing.live import RoutingState
from proxy.routing.stats import Unanswered
from proxy.upstream.targets import Target
from proxy.upstream.ws_pool import SocketPin


@dataclass(frozen=True, slots=True)
class Lost:
    """A cancelled hedge attempt: what it consumed, for accounting and statistics."""

    deployment: Deployment
    sent_at: float
    usage: Usage
    first_token_at: float | None

    def outcome(self, winner: Outcome) -> Outcome:
        """The loser's own Outcome, sharing the winner's request, key and route."""
        dep, usage = self.deployment, self.usage
        return replace(
            winner, deployment=dep.name, hardware=dep.hardware, reason="hedge-lost", status=499,
            error_code="hedge_lost", input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens, reasoning_tokens=usage.reasoning_tokens,
            usage_reported=usage.reported, upstream_started=self.sent_at,
            first_token_at=self.first_token_at, finished=time.perf_counter(),
        )


@dataclass(slots=True)
class Attempt:
    """The response the client will see and how we got it."""

    deployment: Deployment
    target: Target
    response: UpstreamResponse
    reason: str  # "primary" or "fallback:<why the previous candidates failed>"
    injected_usage: bool  # the upstream stream carries a usage chunk the client did not ask for
    sent_at: float        # perf_counter when the chosen upstream request was sent
    losers: tuple[Lost, ...] = ()  # hedged attempts that lost: accounted for what they consumed


class Attempts:
    """Sends to single candidates with the bookkeeping every attempt needs."""

    def __init__(self, live: RoutingState, targets: dict[str, Target]) -> None:
        self.live = live
        self.targets = targets

    async def try_candidate(self, dep: Deployment, req: ModelRequest, ticket: Ticket | None,
                            pin: SocketPin | None) -> UpstreamResponse:
        """Send to one candidate (breaker, in-flight, headroom); raises UpstreamError when the upstream
        cannot be reached or times out, DeploymentLimited ("name=limited") when its limits refuse."""
        live = self.live
        name = dep.name
        if ticket is not None:  # one admission round trip
            await ticket.admit(name)
        breaker = live.breakers.get(name, dep.breaker)
        breaker.begin(time.monotonic())
        live.stats.started(name)
        live.headroom.sent(name, req.input_estimate + (req.max_output_tokens or DEFAULT_OUTPUT_TOKENS))
        # A stream with no response headers yet has had no first token either: its wait bounds the lane's.
        waiting = Unanswered(time.perf_counter()) if req.stream else None
        if waiting is not None:
            live.stats.awaiting(name, waiting, req.input_estimate)
        try:
            response = await self.targets[name].send(req, pin)
        except UpstreamError:
            breaker.failure(time.monotonic())
            live.stats.failed_before_response(name)
            if ticket is not None:
                ticket.release(name)
            raise
        except BaseException:  # cancelled (a hedge that lost): neither a success nor a failure
            breaker.abandon()
            if ticket is not None:
                ticket.release(name)
            raise
        finally:
            if waiting is not None:
                live.stats.answered(name, waiting)
        live.headroom.learn(name, response.status, response.headers, provider=dep.provider)  # routing's view and the limiter's store
        if is_failure(response.status):
            if response.status == 429:  # a quota refusal: fall back, but the deployment is not faulty
                breaker.abandon()
            else:
                breaker.failure(time.monotonic())
            if ticket is not None:
                ticket.release(name)
        else:
            breaker.success()
        return response

    async def skip(self, dep: Deployment, response: UpstreamResponse) -> None:
        """Pass over a candidate that answered 429/5xx: drain its small error body so the connection is reused."""
        try:
            await response.read()
        except UpstreamError:
            pass
        self.live.stats.failed_before_response(dep.name)

    def attempt(self, dep: Deployment, req: ModelRequest, response: UpstreamResponse, chosen: str,
                failures: list[str], sent_at: float) -> Attempt:
        if failures:
            self.live.counters.fallbacks += 1
        reason = chosen if not failures else "fallback:" + ",".join(failures)
        target = self.targets[dep.name]
        return Attempt(dep, target, response, reason, target.injects_usage(req), sent_at)
