"""Quota leases: one store call borrows a slice of a scope's windows and concurrency slots, the
replica admits requests from it in-process until it is spent, and gives back what they did not use.

Per-request store work is what caps admissions per Redis core (docs/limits.md): a lease of k
requests costs one script call to borrow and one (queued) to end, so the cost per request falls
about k-fold. Admission stays exact across replicas: a request is admitted here only inside a
lease whose entries are already in the shared logs, stamped at the lease's end, so they count at
least as long as the request would have; a lease never takes more than the limits have room for.
The price is under-admission: quota one replica has leased and not used is unavailable to the
others until the lease ends (``duration_ms``), and no lease takes more than ``share`` of a limit.
"""
from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from proxy.config.schema import LeaseSettings
from proxy.store.base import CONCURRENCY, COUNTED, PROVIDER, REQUESTS, TOKENS, AdmitResult, Bucket, LeaseGrant


@runtime_checkable
class LeaseStore(Protocol):
    """What a shared store offers for leases (RedisStore)."""

    async def lease(self, rid: str, buckets: Sequence[Bucket], tokens: int, requests: int, lease_tokens: int,
                    slots: int, ahead_ms: int) -> LeaseGrant: ...

    async def end_lease(self, rid: str, buckets: Sequence[Bucket], tokens: int, kept: int, granted: int,
                        held: int, slots: int) -> None: ...

    async def renew(self, rid: str, buckets: Sequence[Bucket]) -> None: ...


@dataclass(eq=False, slots=True)
class Lease:
    """One borrowed slice: ``requests`` admissions, ``tokens`` tokens and ``slots`` concurrency slots
    (``has_slots`` False: the scope has no concurrency limit) until ``ends_at`` (loop time)."""

    rid: str
    buckets: tuple[Bucket, ...]
    requests: int
    tokens: int
    slots: int
    has_slots: bool
    ends_at: float
    result: AdmitResult  # each bucket's remaining and reset once the lease was taken
    taken: int = 0       # requests admitted under it
    in_flight: int = 0   # of those, still running (each holds a slot)
    reserved: int = 0    # tokens reserved by the running ones
    used: int = 0        # tokens the finished ones used
    retired: bool = False
    ending: asyncio.Task | None = None  # its last end write, which the next one waits for

    def fits(self, tokens: int, now: float) -> bool:
        return (not self.retired and now < self.ends_at and self.taken < self.requests
                and self.tokens - self.used - self.reserved >= tokens
                and (not self.has_slots or self.in_flight < self.slots))

    def remaining(self) -> AdmitResult:
        """The buckets' remaining as of the lease, plus what is still unspent in it."""
        spare = {REQUESTS: self.requests - self.taken, COUNTED: self.requests - self.taken,
                 TOKENS: self.tokens - self.used - self.reserved, CONCURRENCY: self.slots - self.in_flight}
        left = [value if b.kind == PROVIDER else value + spare[b.kind] for b, value in zip(self.buckets, self.result.remaining)]
        return AdmitResult(-1, 0, left, self.result.reset_ms)


class Leases:
    """The leases of one limiter, one current lease per scope (a scope's buckets share a hash tag)."""

    def __init__(self, settings: LeaseSettings, store: LeaseStore, spawn: Callable[[Coroutine], asyncio.Task]) -> None:
        self.settings = settings
        self.store = store
        self._spawn = spawn
        self._prefix = f"L{os.getpid():x}.{os.urandom(4).hex()}."
        self._ids = itertools.count()
        self._current: dict[str, Lease] = {}
        self._fetching: dict[str, asyncio.Future] = {}
        self._size: dict[str, int] = {}          # scope -> requests the next lease asks for
        self._per_request: dict[str, float] = {} # scope -> tokens a request reserves, on average
        self._holding: set[Lease] = set()        # leases whose slots are in the store (renewed)
        self.borrowed = 0                        # leases granted
        self.admitted = 0                        # requests admitted from them
        self.answers = 0                         # store replies (grants and refusals): the store is reachable

    async def take(self, buckets: tuple[Bucket, ...], tokens: int) -> Lease | AdmitResult:
        """Admit one request of ``tokens`` from the scope's current lease, borrowing a new one when
        it cannot: the lease it came from, or the store's refusal. StoreError propagates."""
        scope = buckets[0].tag
        loop = asyncio.get_running_loop()
        average = self._per_request.get(scope, float(tokens))
        self._per_request[scope] = average + (tokens - average) / 16
        while True:
            lease = self._current.get(scope)
            if lease is not None and lease.fits(tokens, loop.time()):
                self._admit(scope, lease, tokens)
                return lease
            pending = self._fetching.get(scope)
            if pending is not None:  # one borrow at a time per scope: wait for it, then try its lease
                await pending
                continue
            done = self._fetching[scope] = loop.create_future()
            rid = self._prefix + str(next(self._ids))
            # admissions stop before the store's stamp (its clock read after this one; 2 ms for its
            # millisecond floor), so no request outlives the entries that count it
            ends_at = loop.time() + self.settings.duration_ms / 1000 - 0.002
            try:
                grant = await self._borrow(rid, scope, buckets, tokens)
                self.answers += 1
                if not grant.result.admitted:
                    return grant.result
                lease = Lease(rid, buckets, grant.requests, grant.tokens, grant.slots,
                              any(b.kind == CONCURRENCY for b in buckets), ends_at, grant.result)
                self.borrowed += 1
                if lease.has_slots:
                    self._holding.add(lease)
                old = self._current.get(scope)
                self._current[scope] = lease
                if old is not None:
                    self._retire(scope, old)
                loop.call_at(ends_at, self._retire, scope, lease)
                if lease.fits(tokens, loop.time()):  # before the waiters: the one who borrowed is served
                    self._admit(scope, lease, tokens)
                    return lease
            finally:
                del self._fetching[scope]
                done.set_result(None)

    def _admit(self, scope: str, lease: Lease, tokens: int) -> None:
        self.admitted += 1
        lease.taken += 1
        lease.in_flight += 1
        lease.reserved += tokens
        if lease.taken >= lease.requests:  # spent: its free slots and unreserved tokens go back now
            self._retire(scope, lease)

    async def _borrow(self, rid: str, scope: str, buckets: tuple[Bucket, ...], tokens: int) -> LeaseGrant:
        """Ask for the scope's next lease size, no more than ``share`` of any one limit."""
        share = self.settings.share
        requests = min(self._size.get(scope, 1), self.settings.requests)
        slots = requests
        lease_tokens = int(requests * self._per_request[scope])
        for b in buckets:
            cap = max(1, int(b.limit * share))
            if b.kind in (REQUESTS, COUNTED):
                requests = min(requests, cap)
            elif b.kind == CONCURRENCY:
                slots = min(slots, cap)
            elif b.kind == TOKENS:
                lease_tokens = min(lease_tokens, cap)
        return await self.store.lease(rid, buckets, tokens, requests, max(tokens, lease_tokens), slots,
                                      self.settings.duration_ms)

    def _retire(self, scope: str, lease: Lease) -> None:
        """No more admissions from ``lease``: what is unused goes back now, the rest as requests end.
        The scope's next lease grows when this one ran out before its end, and shrinks to what
        was used when it did not."""
        if lease.retired:
            return
        lease.retired = True
        if self._current.get(scope) is lease:
            del self._current[scope]
        size = self._size.get(scope, 1)
        spent = lease.taken >= lease.requests and asyncio.get_running_loop().time() < lease.ends_at
        self._size[scope] = min(self.settings.requests, 2 * size if spent else max(1, 2 * lease.taken))
        self._end(lease)

    def _end(self, lease: Lease) -> None:
        held = lease.in_flight if lease.has_slots else 0
        if lease.in_flight == 0:
            self._holding.discard(lease)
        lease.ending = self._spawn(self._end_after(lease.ending, lease, lease.used + lease.reserved, lease.taken, held))

    async def _end_after(self, previous: asyncio.Task | None, lease: Lease, tokens: int, kept: int, held: int) -> None:
        """One end write after the other: on a Cluster two calls may overtake each other, and an
        end that still counts running requests must never land after the one that does not."""
        if previous is not None:
            await asyncio.wait([previous])
        await self.store.end_lease(lease.rid, lease.buckets, tokens, kept, lease.requests, held, lease.slots)

    def finish(self, lease: Lease, reserved: int, used: int) -> None:
        """A request admitted under ``lease`` ended, having used ``used`` of its ``reserved`` tokens."""
        lease.in_flight -= 1
        lease.reserved -= reserved
        lease.used += used
        if lease.retired and lease.in_flight == 0:
            self._end(lease)

    def untake(self, lease: Lease, reserved: int) -> None:
        """A request admitted under ``lease`` was not sent (or failed before answering): it never counted."""
        lease.taken -= 1
        lease.in_flight -= 1
        lease.reserved -= reserved
        if lease.retired and lease.in_flight == 0:
            self._end(lease)

    def renew(self) -> None:
        """Keep the slots of leases still holding them from expiring (a crashed replica's expire)."""
        for lease in self._holding:
            held = [b for b in lease.buckets if b.kind == CONCURRENCY]
            self._spawn(self.store.renew(lease.rid, held))

    def retire_all(self) -> None:
        """Every current lease ends (a policy reload may have changed its buckets; shutdown)."""
        for scope, lease in list(self._current.items()):
            self._retire(scope, lease)
