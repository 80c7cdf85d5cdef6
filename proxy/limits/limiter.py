"""The limiter: one admission round trip per candidate, reservations reconciled afterwards.

A request borrows a Ticket (``borrow``), a value its caller passes to routing and gives
back with the real usage (``give_back``), as TensorZero's gateway consumes and returns
rate-limit tickets. ``Ticket.admit(deployment)`` checks and reserves the client's buckets
(first time only) and the deployment's (configured windows + the provider's last word) in one
store call; a deployment that refuses is skipped by routing (DeploymentLimited), a client
that refuses is refused (ClientLimited). Giving back replaces the token reservation with the
real usage and frees concurrency slots; leases of live requests are renewed in the background so a crashed
replica's slots expire on their own. With ``store.leases`` set, a shared store is asked for quota
leases instead (proxy/limits/leases.py) and most admissions need no store call at all. Store
trouble follows ``store.on_store_error``.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from proxy.call import DEFAULT_OUTPUT_TOKENS, UpstreamError
from proxy.config.schema import Policy, StoreSettings
from proxy.errors import ClientLimited
from proxy.limits.buckets import limit_buckets, provider_bucket
from proxy.limits.headroom import Headroom, HeadroomLearner
from proxy.limits.leases import Lease, Leases, LeaseStore
from proxy.limits.provider_headers import ProviderWindow
from proxy.store.base import CONCURRENCY, COUNTED, REQUESTS, TOKENS, AdmitResult, AmountError, Bucket, ProviderWindowState, Store, StoreError, bucket_amounts
from proxy.store.failover import Failover
from proxy.store.memory import MemoryStore

log = logging.getLogger("laneway.limits")


class DeploymentLimited(UpstreamError):
    """A deployment's own limits (or the provider's word) refused the request: routing skips it
    like an unreachable upstream (``kind`` shows in the route reason as ``name=limited``)."""

    kind = "limited"

    def __init__(self, deployment: str, retry_ms: int) -> None:
        super().__init__(f"{deployment} is at its rate limit")
        self.deployment = deployment
        self.retry_ms = retry_ms


@dataclass(frozen=True, slots=True)
class ClientWindow:
    """One of the client's own windows after its admission: what the API reports as x-ratelimit-*."""

    what: str        # "requests" | "tokens" | "concurrency"
    limit: int
    remaining: int
    reset_ms: int
    span_ms: int


@dataclass(slots=True)
class Ticket:
    """One request's reservations: ``held`` maps "" (the client) and deployment names to buckets in
    ``store``; ``leases`` maps them to the quota leases they were admitted from instead."""

    limiter: "Limiter"
    rid: str
    client: str
    input_tokens: int
    max_output: int | None
    tokens: int = 0                  # reserved per token bucket
    client_held: bool = False
    held: dict[str, tuple[Bucket, ...]] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    store: Store | None = None
    deployment: str | None = None    # the last deployment admitted
    retry_ms: int = 0                # shortest wait a refusing deployment named
    spilled: bool = False
    client_windows: tuple[ClientWindow, ...] = ()
    finished: bool = False

    async def admit(self, deployment: str) -> None:
        """Reserve for ``deployment``; raises DeploymentLimited (skip it) or ClientLimited (no candidate helps)."""
        if not await self.limiter.admit(self, deployment):
            raise DeploymentLimited(deployment, self.retry_ms)

    def release(self, deployment: str) -> None:
        self.limiter.release(self, deployment)


@dataclass(slots=True)
class LimitStats:
    """Plain counters for metrics exporters; read them, never reset them.

    ``remaining`` / ``provider``: (deployment, window) -> (remaining, limit, reset at epoch s),
    ours from the last admission, the provider's from its last headers.
    ``reservation_error``: deployment -> [sum of estimated - actual tokens, requests].
    """

    rejections: Counter = field(default_factory=Counter)       # (scope, name) -> refusals
    spills: Counter = field(default_factory=Counter)           # deployment -> requests it took because an earlier candidate was at its limit
    remaining: dict = field(default_factory=dict)
    provider: dict = field(default_factory=dict)
    reservation_error: dict = field(default_factory=dict)
    store_errors: int = 0
    local_admissions: int = 0                                  # admitted by the fail-open fallback


class Limiter:
    """One per process; ``load(policy)`` again on reload (state and counters carry over)."""

    def __init__(self, settings: StoreSettings, store: Store | None = None) -> None:
        self.settings = settings
        self.shared = store is not None  # the store is shared with other replicas (Redis)
        self.store: Store = store if store is not None else MemoryStore()
        self.fallback = MemoryStore()
        self.stats = LimitStats()
        self.failover = Failover(settings.on_store_error, self.store, self.fallback, self.stats)
        self._ids = itertools.count()
        self._prefix = f"{os.getpid():x}.{os.urandom(4).hex()}."
        self._live: dict[str, Ticket] = {}
        self._renewer: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.learner = HeadroomLearner()  # also routing's view (ProxyState hands it over)
        self.learner.sink = self._learnt
        self.store.background_failed = self.failover.background_failed
        self._speaks: set[str] = set()   # deployments whose responses carry rate-limit headers
        self._clients: dict[str, tuple[tuple[Bucket, ...], tuple[Bucket, ...]]] = {}
        self._deployments: dict[str, tuple[tuple[Bucket, ...], tuple[Bucket, ...]]] = {}
        self._reserve: dict[str, int] = {}
        self._provider_buckets: dict[str, Bucket] = {}
        self.leases: Leases | None = None
        if settings.leases is not None and store is not None and isinstance(store, LeaseStore):
            self.leases = Leases(settings.leases, store, self._spawn)

    @classmethod
    def from_policy(cls, policy: Policy) -> "Limiter":
        settings = policy.store
        store = None
        if settings.redis_url:
            from proxy.store import connect
            from proxy.store.redis_store import RedisStore

            store = RedisStore(connect.limits_target(settings))
        limiter = cls(settings, store)
        limiter.load(policy)
        return limiter

    def load(self, policy: Policy) -> None:
        lease_ms = int(self.settings.lease_s * 1000)
        replicas = self.settings.replicas
        self._clients = {
            key.name: (limit_buckets("client", key.name, key.limits, lease_ms), limit_buckets("client", key.name, key.limits, lease_ms, replicas))
            for key in policy.keys if key.limits is not None
        }
        self._deployments = {
            name: (limit_buckets("deployment", name, dep.limits, lease_ms), limit_buckets("deployment", name, dep.limits, lease_ms, replicas))
            for name, dep in policy.deployments.items() if dep.limits is not None
        }
        self._reserve = {name: dep.limits.reserve_output_tokens for name, dep in policy.deployments.items() if dep.limits is not None}
        if self.leases is not None:  # leases of the old limits end; new ones are borrowed under the new
            self.leases.retire_all()

    # --- admission -----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """False when the policy sets no limits at all: requests then skip the limiter entirely."""
        return bool(self._clients or self._deployments)

    def borrow(self, client: str, input_tokens: int, max_output: int | None) -> Ticket | None:
        """A ticket for one request (None when the policy sets no limits); give it back with ``give_back``."""
        if not self.active:
            return None
        return Ticket(self, self._prefix + str(next(self._ids)), client, input_tokens, max_output)

    async def admit(self, ticket: Ticket, deployment: str) -> bool:
        """Reserve for ``deployment``: True if admitted, False if its limits refuse (try the next one).

        Raises ClientLimited when the client's own limits refuse (no candidate would help), and
        StoreUnavailable under fail_closed when the store cannot answer.
        """
        # one request keeps one home for all its reservations
        store = ticket.store if ticket.held and ticket.store is not None else self.failover.choose()
        pick = 1 if store is self.fallback else 0  # the local store keeps per-replica limits
        client = () if ticket.client_held else self._clients.get(ticket.client, ((), ()))[pick]
        own = self._deployments.get(deployment, ((), ()))[pick]
        if own or deployment in self._speaks:
            own = (*own, self._provider_bucket(deployment))
        buckets = (*client, *own)
        if not buckets:
            ticket.deployment = deployment
            if ticket.spilled:
                self.stats.spills[deployment] += 1
            return True
        if not ticket.client_held:
            ticket.tokens = ticket.input_tokens + (ticket.max_output or self._reserve.get(deployment, DEFAULT_OUTPUT_TOKENS))
        try:
            if self.leases is not None and store is self.store and not self.failover.serving_locally:
                answers = self.leases.answers
                admitted = await self._admit_leased(ticket, deployment, client, own)
                if self.leases.answers != answers:  # not when every part came from leases already held
                    self.failover.answered()
                return admitted
            result = await store.admit(ticket.rid, buckets, bucket_amounts(buckets, ticket.tokens))
        except StoreError as exc:
            self.failover.failed(exc)  # fail_closed: raises StoreUnavailable
            ticket.held = {}  # what it holds is in the failed store: settling there may fail too; let it expire
            return await self.admit(ticket, deployment)  # fail_open: again, from the local store
        if store is not self.fallback:
            self.failover.answered()
        if not result.admitted:
            return self._refused(ticket, deployment, buckets[result.refused], result.retry_ms)
        if store is self.fallback:
            self.failover.admitted_locally()
        ticket.store = store
        ticket.deployment = deployment
        if client:
            ticket.client_held = True
            ticket.held[""] = client
            ticket.client_windows = _client_windows(client, result)
        if own:
            ticket.held[deployment] = own
        self._note_remaining(buckets, result)
        if ticket.spilled:
            self.stats.spills[deployment] += 1
        if any(b.kind == CONCURRENCY for b in buckets):
            self._track(ticket)
        return True

    async def _admit_leased(self, ticket: Ticket, deployment: str, client: tuple[Bucket, ...],
                            own: tuple[Bucket, ...]) -> bool:
        """``admit`` from quota leases: the client's scope first, then the deployment's; a refusal
        of the second hands the first's request back to its lease."""
        took = None
        if client:
            took = await self.leases.take(client, ticket.tokens)
            if isinstance(took, AdmitResult):
                return self._refused(ticket, deployment, client[took.refused], took.retry_ms)
        if own:
            try:
                lease = await self.leases.take(own, ticket.tokens)
            except BaseException:
                if took is not None:
                    self.leases.untake(took, ticket.tokens)
                raise
            if isinstance(lease, AdmitResult):
                if took is not None:
                    self.leases.untake(took, ticket.tokens)
                return self._refused(ticket, deployment, own[lease.refused], lease.retry_ms)
            ticket.leases[deployment] = lease
            self._note_remaining(own, lease.remaining())
        if took is not None:
            ticket.client_held = True
            ticket.leases[""] = took
            ticket.client_windows = _client_windows(client, took.remaining())
        ticket.store = self.store
        ticket.deployment = deployment
        if ticket.spilled:
            self.stats.spills[deployment] += 1
        if any(lease.has_slots for lease in ticket.leases.values()):
            self._track(ticket)
        return True

    def _track(self, ticket: Ticket) -> None:
        """A live request holding concurrency slots: renewed until it is given back."""
        self._live[ticket.rid] = ticket
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())

    def _refused(self, ticket: Ticket, deployment: str, bucket: Bucket, retry_ms: int) -> bool:
        self.stats.rejections[(bucket.scope, bucket.owner)] += 1
        if bucket.scope == "client":
            raise _client_refusal(bucket, retry_ms)
        ticket.spilled = True
        if retry_ms > 0 and (ticket.retry_ms <= 0 or retry_ms < ticket.retry_ms):
            ticket.retry_ms = retry_ms
        return False

    def release(self, ticket: Ticket, deployment: str) -> None:
        """``deployment`` failed before answering (or lost a hedge): give back its part of the reservation."""
        lease = ticket.leases.pop(deployment, None)
        if lease is not None:
            self.leases.untake(lease, ticket.tokens)
        own = ticket.held.pop(deployment, None)
        if own and ticket.store is not None:
            self._spawn(ticket.store.settle(ticket.rid, own, None))

    def give_back(self, ticket: Ticket, used_tokens: int) -> None:
        """The request is over (answered, refused, cut off or abandoned): replace the token
        reservation with ``used_tokens`` and free concurrency slots. Idempotent."""
        if ticket.finished:
            return
        ticket.finished = True
        self._live.pop(ticket.rid, None)
        if ticket.leases:
            for lease in ticket.leases.values():
                self.leases.finish(lease, ticket.tokens, used_tokens)
        if ticket.deployment in ticket.held or ticket.deployment in ticket.leases:
            row = self.stats.reservation_error.setdefault(ticket.deployment, [0, 0])
            row[0] += ticket.tokens - used_tokens
            row[1] += 1
        ticket.leases = {}
        if not ticket.held or ticket.store is None:
            return
        buckets = [b for group in ticket.held.values() for b in group]
        ticket.held = {}
        self._spawn(ticket.store.settle(ticket.rid, buckets, used_tokens))

    # --- provider headers (learnt by self.learner, shared through the store here) ------------

    def _learnt(self, deployment: str, windows: list[ProviderWindow], exhausted_ms: int) -> None:
        """The learner read a response's rate-limit headers: note them and share them through the store."""
        if not self.active:
            return
        self._speaks.add(deployment)
        now = time.time()
        for w in windows:
            self.stats.provider[(deployment, w.window)] = (w.remaining, w.limit, now + w.reset_s)
        states = [ProviderWindowState(w.window, w.kind, w.remaining, int(w.reset_s * 1000)) for w in windows]
        # queued by the store: it rides with the next admission's round trip (or the store's next tick), never one of its own
        store = self.fallback if self.failover.serving_locally else self.store
        store.learn(self._provider_bucket(deployment), states, exhausted_ms)

    def _provider_bucket(self, deployment: str) -> Bucket:
        prov = self._provider_buckets.get(deployment)
        if prov is None:
            prov = self._provider_buckets[deployment] = provider_bucket(deployment)
        return prov

    def _note_remaining(self, buckets: tuple[Bucket, ...], result: AdmitResult) -> None:
        now = time.time()
        for bucket, left, reset in zip(buckets, result.remaining, result.reset_ms):
            if bucket.scope != "deployment" or left < 0:
                continue
            self.stats.remaining[(bucket.owner, bucket.window)] = (left, bucket.limit, now + reset / 1000)
            if bucket.kind in (REQUESTS, COUNTED, TOKENS):  # per-minute and per-day caps alike
                kind = "tokens" if bucket.kind == TOKENS else "requests"
                self.learner.admitted(bucket.owner, bucket.window, kind, left, bucket.limit, reset / 1000,
                                      bucket.span_ms / 1000)

    def headroom(self, deployment: str) -> Headroom | None:
        """In-process view (no store call): our last admission's windows and the provider's last word."""
        return self.learner.headroom(deployment)

    # --- store trouble, leases, background work ---------------------------------------

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro) -> None:
        try:
            await coro
        except StoreError as exc:
            self.failover.background_failed(exc)
        except AmountError as exc:  # a caller's mistake: the reservation stays as it was (and expires)
            log.error("rate limits: %s", exc)

    async def _renew_leases(self) -> None:
        """Keep live requests' concurrency leases from expiring; stops when none are left."""
        interval = self.settings.lease_s / 3
        while self._live:
            await asyncio.sleep(interval)
            if self.leases is not None:
                self.leases.renew()
            for ticket in list(self._live.values()):
                if ticket.store is not None:
                    leases = [b for group in ticket.held.values() for b in group if b.kind == CONCURRENCY]
                    self._spawn(ticket.store.renew(ticket.rid, leases))

    async def aclose(self) -> None:
        if self.leases is not None:
            self.leases.retire_all()
        if self._renewer is not None:
            self._renewer.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        await self.store.aclose()


def _client_windows(buckets: tuple[Bucket, ...], result: AdmitResult) -> tuple[ClientWindow, ...]:
    return tuple(ClientWindow(_WHAT[b.window], b.limit, left, reset, b.span_ms)
                 for b, left, reset in zip(buckets, result.remaining, result.reset_ms))


def _client_refusal(bucket: Bucket, retry_ms: int) -> ClientLimited:
    what = _WHAT[bucket.window]
    if retry_ms < 0:
        return ClientLimited(
            f"This request needs more tokens than key '{bucket.owner}' may use per {bucket.window} "
            f"({bucket.limit}); lower max_tokens or shorten the prompt.",
            what=what, limit=bucket.limit, retry_ms=retry_ms)
    seconds = max(1, math.ceil(retry_ms / 1000))
    limit = f"{bucket.limit} concurrent requests" if what == "concurrency" else f"{bucket.limit} {what} per {bucket.window}"
    return ClientLimited(f"Rate limit reached for key '{bucket.owner}': {limit}. Retry after {seconds}s.",
                         what=what, limit=bucket.limit, retry_ms=retry_ms)


_WHAT = {"rpm": "requests", "rpd": "requests", "tpm": "tokens", "tpd": "tokens", "concurrency": "concurrency"}
