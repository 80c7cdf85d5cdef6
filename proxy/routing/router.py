"""Pick a deployment for a request and fall back along the route's candidates.

Fallback happens only before the first byte reaches the client: on a connect error,
a timeout waiting for headers, a 429 or a 5xx. Client errors (4xx) are the client's
to see and are relayed as the provider sent them. The order in which candidates are
tried comes from ``strategies.order_candidates`` (strategy, SLO, hints, headroom,
breakers); every attempt feeds the breakers and the provider-headroom view.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from proxy.config.schema import Deployment, Policy, Route
from proxy.errors import ProxyError
from proxy.limits.limiter import CURRENT_TICKET
from proxy.routing.failures import is_failure, no_upstream_error
from proxy.routing.hedge import Lost, hedged_dispatch
from proxy.routing.hints import NO_HINTS, Hints
from proxy.routing.live import RoutingState
from proxy.routing.strategies import order_candidates
from proxy.upstream.http_pool import UpstreamError, UpstreamPools
from proxy.upstream.request import ModelRequest
from proxy.upstream.targets import Target, build_target


class UpstreamResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]

    def iter_body(self): ...
    async def read(self) -> bytes: ...
    def release(self) -> None: ...


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


class Router:
    """Resolves model names to routes and dispatches along them; one per loaded policy."""

    def __init__(self, policy: Policy, pools: UpstreamPools, live: RoutingState | None = None) -> None:
        self.policy = policy
        self.live = live if live is not None else RoutingState()
        self.targets: dict[str, Target] = {name: build_target(dep, pools) for name, dep in policy.deployments.items()}
        self._routes: dict[str, Route] = dict(policy.routes)
        for name, dep in policy.deployments.items():
            single = Route(name=name, candidates=(name,))
            self._routes.setdefault(name, single)
            self._routes.setdefault(dep.model, single)

    def resolve(self, model: str) -> Route:
        route = self._routes.get(model)
        if route is None:
            raise ProxyError(
                404,
                f"The model '{model[:200]}' does not exist on this proxy. "
                f"Use one of: {', '.join(self.model_names())}.",
                code="model_not_found",
                param="model",
            )
        return route

    def model_names(self) -> list[str]:
        """Route names first (what clients should ask for), then concrete deployments and models."""
        return list(dict.fromkeys(self._routes))

    async def dispatch(self, route: Route, req: ModelRequest, hints: Hints = NO_HINTS) -> Attempt:
        candidates, chosen = order_candidates(route, self.policy.deployments, req, hints, self.live, time.monotonic())
        if route.hedge is not None and len(candidates) > 1:
            return await hedged_dispatch(self, route, req, candidates, chosen, route.hedge.after_ms / 1000.0)
        failures: list[str] = []
        last_error: UpstreamError | None = None
        for index, dep in enumerate(candidates):
            sent_at = time.perf_counter()
            try:
                response = await self.try_candidate(dep, req)
            except UpstreamError as exc:
                failures.append(f"{dep.name}={exc.kind}")
                last_error = exc
                continue
            if index < len(candidates) - 1 and is_failure(response.status):
                await self.skip(dep, response)
                failures.append(f"{dep.name}={response.status}")
                continue
            return self.attempt(dep, req, response, chosen, failures, sent_at)
        assert last_error is not None
        raise no_upstream_error(last_error, failures)

    async def try_candidate(self, dep: Deployment, req: ModelRequest) -> UpstreamResponse:
        """Send to one candidate with the bookkeeping every attempt needs (breaker, in-flight,
        headroom); raises UpstreamError when the upstream cannot be reached or times out."""
        live = self.live
        name = dep.name
        ticket = CURRENT_TICKET.get()
        if ticket is not None:  # one admission round trip; DeploymentLimited ("name=limited") skips it
            await ticket.admit(name)
        breaker = live.breakers.get(name, dep.breaker)
        breaker.begin(time.monotonic())
        live.stats.started(name)
        live.provider_headroom.debit(name, req.input_estimate + (req.max_output_tokens or 0))
        try:
            response = await self.targets[name].send(req)
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
        live.provider_headroom.learn(name, response.status, response.headers)
        if ticket is not None:
            ticket.observe(name, response.status, response.headers)
        if is_failure(response.status):
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
