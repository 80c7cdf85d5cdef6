"""Process-wide state: the active policy and everything derived from it, swapped as one."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from proxy.api.access_log import access_log
from proxy.api.auth import Authenticator
from proxy.call import Outcome
from proxy.config.reload import PolicyReloader
from proxy.config.schema import Policy
from proxy.limits import Limiter
from proxy.pricing.accounting import Accounting
from proxy.pricing.budgets import Budgets
from proxy.routing.explore import IdleProber
from proxy.routing.live import RoutingState
from proxy.routing.router import Router
from proxy.routing.share import StatsSharing
from proxy.store import connect
from proxy.store.affinity import AffinityStore, MemoryAffinity, RedisAffinity
from proxy.upstream.http_pool import UpstreamPools
from proxy.upstream.ws_pool import SocketPools

log = logging.getLogger("laneway")


@dataclass(frozen=True, slots=True)
class Runtime:
    """One policy's view of the world; a request keeps the Runtime it started with."""

    policy: Policy
    router: Router
    auth: Authenticator
    budgets: Budgets | None = None  # per key/team spend limits, reserved by the pipeline
    limiter: Limiter | None = None  # rate limits: the pipeline borrows a ticket, the router admits candidates on it


class ProxyState:
    def __init__(self, policy: Policy) -> None:
        self.pools = UpstreamPools()
        self.sockets = SocketPools()  # upstream WebSocket pools, like the HTTP pools shared across reloads
        self.accounting = Accounting(policy)  # price book, usage ledger, budgets; survives reloads
        self.limiter = Limiter.from_policy(policy)  # shared limits state; survives reloads
        self.routing = RoutingState(headroom=self.limiter.learner)  # learnt statistics survive policy reloads
        self.accounting.budgets.use_store(self.limiter.store, policy.store.on_store_error)  # one shared spend per budget
        self.runtime = self._build(policy)
        # Told of every finished request after its ticket and budget hold are given back.
        self.observers: list[Callable[[Outcome], None]] = [self.routing.stats.finished, self.accounting.record]
        self.observers.append(access_log)  # one line per request / WebSocket turn (proxy.api.access_log)
        self.affinity = _affinity(self.limiter)  # response id -> deployment holding it, for continuations
        self.reloader: PolicyReloader | None = None  # started by the app's lifespan when the policy is a file
        self.sharing: StatsSharing | None = None  # latency statistics merged with other replicas via Redis
        self.prober: IdleProber | None = None  # probes demoted lanes no client request reaches (started by the app)

    def _build(self, policy: Policy) -> Runtime:
        budgets = self.accounting.budgets
        self.limiter.load(policy)
        return Runtime(policy, Router(policy, self.pools, self.sockets, self.routing), Authenticator(policy), budgets,
                       self.limiter)

    def swap(self, policy: Policy) -> None:
        """Make ``policy`` the one new requests see; requests in flight keep the Runtime they began with."""
        self.accounting.use_policy(policy)
        self.runtime = self._build(policy)

    @property
    def policy(self) -> Policy:
        return self.runtime.policy

    def finish(self, outcome: Outcome) -> None:
        """Hand a finished request to accounting and metrics; never lets them break a response."""
        for observer in self.observers:
            try:
                observer(outcome)
            except Exception:
                log.exception("observer %r failed for request %s", observer, outcome.request_id)

    def close(self) -> None:
        self.pools.close()
        self.sockets.close()

    def share_statistics(self) -> None:
        """With a Redis in the policy (`store.redis_url`), merge latency statistics with the other replicas."""
        target = connect.sharing_target(self.runtime.policy.store)
        if target is not None and self.sharing is None:
            self.sharing = StatsSharing(self.routing.stats, target)
            self.sharing.start()

    def probe_idle_lanes(self) -> None:
        """Start probing demoted lanes that no client request reaches (``learning.idle_probe_s``)."""
        if self.prober is None:
            self.prober = IdleProber(lambda: self.runtime.router, self.limiter, self.finish)
            self.prober.start()

    async def aclose(self) -> None:
        """close(), then let the limiter finish its pending writes and drop its store connections."""
        if self.prober is not None:
            await self.prober.aclose()
        self.close()
        if self.sharing is not None:
            await self.sharing.aclose()
        await self.limiter.aclose()


AFFINITY_TTL_S = 30 * 86_400  # as long as a provider keeps a stored response (OpenAI: 30 days)


def _affinity(limiter: Limiter) -> AffinityStore:
    """Shared through the limiter's Redis when there is one (every replica must find the owner)."""
    client = getattr(limiter.store, "client", None) if limiter.shared else None
    return RedisAffinity(client, AFFINITY_TTL_S) if client is not None else MemoryAffinity(AFFINITY_TTL_S)
