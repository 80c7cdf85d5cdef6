"""Process-wide state: the active policy and everything derived from it, swapped as one."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from proxy.api.auth import Authenticator
from proxy.config.schema import Policy
from proxy.routing.router import Router
from proxy.upstream.http_pool import UpstreamPools
from proxy.upstream.request import Outcome

log = logging.getLogger("laneway")


@dataclass(frozen=True, slots=True)
class Runtime:
    """One policy's view of the world; a request keeps the Runtime it started with."""

    policy: Policy
    router: Router
    auth: Authenticator


class ProxyState:
    def __init__(self, policy: Policy) -> None:
        self.pools = UpstreamPools()
        self.runtime = self._build(policy)
        self.observers: list[Callable[[Outcome], None]] = []

    def _build(self, policy: Policy) -> Runtime:
        return Runtime(policy, Router(policy, self.pools), Authenticator(policy))

    def finish(self, outcome: Outcome) -> None:
        """Hand a finished request to accounting and metrics; never lets them break a response."""
        for observer in self.observers:
            try:
                observer(outcome)
            except Exception:
                log.exception("observer %r failed for request %s", observer, outcome.request_id)

    def close(self) -> None:
        self.pools.close()
