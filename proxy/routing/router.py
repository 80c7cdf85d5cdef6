"""Pick a deployment for a request and fall back along the route's candidates.

Fallback happens only before the first byte reaches the client: on a connect error,
a timeout waiting for headers, a 429 or a 5xx. Client errors (4xx) are the client's
to see and are relayed as the provider sent them. The order in which candidates are
tried comes from ``strategies.order_candidates`` (strategy, SLO, hints, headroom,
breakers); every attempt feeds the breakers and the provider-headroom view.
"""
from __future__ import annotations

import time
from dataclasses import replace

from proxy.call import DEFAULT_OUTPUT_TOKENS, ModelRequest, UpstreamError
from proxy.config.schema import Deployment, Policy, Route
from proxy.errors import ModelNotFound
from proxy.limits.limiter import Ticket
from proxy.pricing import price_of
from proxy.routing.attempts import Attempt, Attempts
from proxy.routing.failures import is_failure, no_upstream_error
from proxy.routing.hedge import hedged_dispatch
from proxy.routing.hints import NO_HINTS, Hints
from proxy.routing.live import RoutingState
from proxy.routing.strategies import order_candidates
from proxy.upstream.http_pool import UpstreamPools
from proxy.upstream.targets import Target, build_target
from proxy.upstream.ws_pool import SocketPin, SocketPools


class Router:
    """Resolves model names to routes and dispatches along them; one per loaded policy."""

    def __init__(self, policy: Policy, pools: UpstreamPools, sockets: SocketPools, live: RoutingState | None = None) -> None:
        self.policy = policy
        self.live = live if live is not None else RoutingState()
        self.targets: dict[str, Target] = {name: build_target(dep, pools, sockets) for name, dep in policy.deployments.items()}
        self.attempts = Attempts(self.live, self.targets)
        self._routes: dict[str, Route] = dict(policy.routes)
        for name, dep in policy.deployments.items():
            single = Route(name=name, candidates=(name,))
            self._routes.setdefault(name, single)
            self._routes.setdefault(dep.model, single)

    def resolve(self, model: str) -> Route:
        route = self._routes.get(model)
        if route is None:
            raise ModelNotFound(
                f"The model '{model[:200]}' does not exist on this proxy. "
                f"Use one of: {', '.join(self.model_names())}.",
                param="model",
            )
        return route

    def model_names(self) -> list[str]:
        """Route names first (what clients should ask for), then concrete deployments and models."""
        return list(dict.fromkeys(self._routes))

    async def dispatch(self, route: Route, req: ModelRequest, hints: Hints = NO_HINTS, ticket: Ticket | None = None,
                       pin: SocketPin | None = None, cheapest_first: bool = False, owner: str | None = None) -> Attempt:
        """Try ``route``'s candidates in the strategy's order until one answers.

        ``ticket`` (the request's rate-limit reservation) admits each candidate; ``pin`` lets a
        WebSocket conversation continue on the upstream socket that holds it; ``cheapest_first``
        (a soft budget passed) tries the cheapest priced candidates first, in order; ``owner``,
        the deployment holding the response a request continues, is a hard constraint.
        """
        if owner is not None and owner in self.policy.deployments:
            return await self._to_owner(self.policy.deployments[owner], req, ticket, pin)
        if not cheapest_first:
            return await self._dispatch(route, req, hints, ticket, pin)
        attempt = await self._dispatch(self._cheapest_first(route, req), req, hints, ticket, pin)
        attempt.reason = "budget_soft:cheapest_first," + attempt.reason
        return attempt

    async def _dispatch(self, route: Route, req: ModelRequest, hints: Hints, ticket: Ticket | None,
                        pin: SocketPin | None) -> Attempt:
        candidates, chosen, spilled = order_candidates(route, self.policy.deployments, req, hints, self.live,
                                                       time.monotonic())
        attempts = self.attempts
        if route.hedge is not None and len(candidates) > 1:
            return await hedged_dispatch(attempts, req, candidates, chosen, route.hedge.after_ms / 1000.0, ticket, pin,
                                         spilled)
        failures: list[str] = []
        last_error: UpstreamError | None = None
        for index, dep in enumerate(candidates):
            sent_at = time.perf_counter()
            try:
                response = await attempts.try_candidate(dep, req, ticket, pin)
            except UpstreamError as exc:
                failures.append(f"{dep.name}={exc.kind}")
                last_error = exc
                continue
            if index < len(candidates) - 1 and is_failure(response.status):
                await attempts.skip(dep, response)
                failures.append(f"{dep.name}={response.status}")
                continue
            return attempts.attempt(dep, req, response, chosen, failures, sent_at)
        assert last_error is not None
        raise no_upstream_error(last_error, failures)

    async def _to_owner(self, dep: Deployment, req: ModelRequest, ticket: Ticket | None, pin: SocketPin | None) -> Attempt:
        """Only the deployment that holds the previous response can continue it: no fallback."""
        sent_at = time.perf_counter()
        try:
            response = await self.attempts.try_candidate(dep, req, ticket, pin)
        except UpstreamError as exc:
            raise no_upstream_error(exc, [f"{dep.name}={exc.kind}"],
                                    holder=f"The deployment that holds previous_response_id ({dep.name})") from None
        return self.attempts.attempt(dep, req, response, f"affinity:{dep.name}", [], sent_at)

    def _cheapest_first(self, route: Route, req: ModelRequest) -> Route:
        """The route's candidates by estimated cost, unpriced last, tried in that order."""
        deployments = self.policy.deployments
        out = req.max_output_tokens or DEFAULT_OUTPUT_TOKENS
        costs: dict[str, float] = {}
        for name in route.candidates:
            price = price_of(deployments[name], req.input_estimate, out)
            costs[name] = float("inf") if price is None else float(price)
        order = sorted(route.candidates, key=lambda name: costs[name])
        return replace(route, candidates=tuple(order), strategy="fallback")
