"""Pick a deployment for a request and fall back along the route's candidates.

Fallback happens only before the first byte reaches the client: on a connect error,
a timeout waiting for headers, a 429 or a 5xx. Client errors (4xx) are the client's
to see and are relayed as the provider sent them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from proxy.config.schema import Deployment, Policy, Route
from proxy.errors import ProxyError
from proxy.upstream.http_pool import UpstreamError, UpstreamPools, UpstreamTimeout
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


class Router:
    """Resolves model names to routes and dispatches along them; one per loaded policy."""

    def __init__(self, policy: Policy, pools: UpstreamPools) -> None:
        self.policy = policy
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

    async def dispatch(self, route: Route, req: ModelRequest) -> Attempt:
        failures: list[str] = []
        last_error: UpstreamError | None = None
        candidates = route.candidates
        for index, name in enumerate(candidates):
            target = self.targets[name]
            is_last = index == len(candidates) - 1
            sent_at = time.perf_counter()
            try:
                response = await target.send(req)
            except UpstreamError as exc:
                failures.append(f"{name}={exc.kind}")
                last_error = exc
                continue
            if not is_last and (response.status == 429 or response.status >= 500):
                await response.read()  # small error body; keeps the connection reusable
                failures.append(f"{name}={response.status}")
                continue
            reason = "primary" if not failures else "fallback:" + ",".join(failures)
            return Attempt(target.deployment, target, response, reason, target.injects_usage(req), sent_at)
        assert last_error is not None
        raise _as_proxy_error(last_error, failures)


def _as_proxy_error(error: UpstreamError, failures: list[str]) -> ProxyError:
    """Client-facing error: names deployments and failure kinds, never upstream hosts or keys."""
    tried = ", ".join(failures)
    if isinstance(error, UpstreamTimeout):
        return ProxyError(504, f"No upstream answered in time (tried: {tried}). Retry later.", code="upstream_timeout")
    return ProxyError(502, f"No upstream could be reached (tried: {tried}). Retry later.", code="upstream_unavailable")
