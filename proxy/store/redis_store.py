"""RedisStore: the Lua scripts over redis-py's asyncio client, standalone or Cluster.

Scripts are loaded once (SCRIPT LOAD, on every master of a Cluster), then sent by SHA
(EVALSHA); a NOSCRIPT answer (after SCRIPT FLUSH or a restart) loads them again, once,
however many requests saw it at the same time.
On a standalone server one call covers every bucket of a request. On a Cluster, buckets
are grouped by hash tag (one group per scope: a client, a deployment), the groups are sent
concurrently, and a group that admitted is undone when another refused, so no bucket ever
holds a reservation for a request that was turned away.
Writes off the request path (settles and budget adjustments on a standalone server, provider
reports on both) are queued and sent in the pipeline of the next admission, or within
``SETTLE_DELAY_S`` when none comes: one round trip per request.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence

from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from proxy.store import connect, scripts
from proxy.store.base import (MAX_AMOUNT, PROVIDER, TOKENS, AdmitResult, Bucket, LeaseGrant, ProviderWindowState, SpendResult, StoreError,
                              check_amount)


SETTLE_DELAY_S = 0.02
# what redis-py raises when Redis cannot answer (a Cluster it cannot reach at all is no RedisError)
_FAILURES = (RedisError, RedisClusterException)


def _call_args(rid: str, buckets: Sequence[Bucket], tokens: int | str) -> tuple[list[str], list]:
    keys: list[str] = []
    for bucket in buckets:
        keys.append(bucket.key)
        if bucket.logged:
            keys.append(bucket.amounts_key)
    return keys, [rid, "|".join([f"{b.kind}:{b.limit}:{b.span_ms}" for b in buckets]), tokens]


def _tokens(buckets: Sequence[Bucket], amounts: Sequence[int]) -> int:
    """The request's token amount (what token and provider buckets take; the others take 1)."""
    return next((a for b, a in zip(buckets, amounts) if b.kind in (TOKENS, PROVIDER)), 0)


class RedisStore:
    """The target's ``timeout_s`` bounds every call (connect and read); errors surface as StoreError.

    ``amounts`` must be what ``bucket_amounts`` gives (the request's tokens for token and
    provider buckets, 1 for the rest): only the token figure is sent, the script derives the rest.
    """

    def __init__(self, target: connect.Target) -> None:
        self.client = connect.client(target)
        self.cluster = target.cluster
        # the request path's calls (admission, budget reservation, with queued settles) go over a
        # lean pipelined connection: one socket however many requests are in flight
        self._fast = connect.lean(target)
        self._admit = _Script(scripts.ADMIT)
        self._settle = _Script(scripts.SETTLE)
        self._renew = _Script(scripts.RENEW)
        self._lease = _Script(scripts.LEASE)
        self._end_lease = _Script(scripts.END_LEASE)
        self._learn = _Script(scripts.LEARN)
        self._reserve_spend = _Script(scripts.SPEND_RESERVE)
        self._adjust_spend = _Script(scripts.SPEND_ADJUST)
        # writes off the request path (settles, budget adjustments, provider reports) waiting to
        # ride with the next admission: (script, keys, args)
        self._pending: list[tuple[_Script, list[str], list]] = []
        # provider key -> its report not yet sent (in _pending, or held for the timer), so newer ones merge in
        self._learns: dict[str, _Report] = {}
        self._written: set[str] = set()  # provider keys whose report went into _pending since the last tick
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task] = set()
        self.dropped_writes = 0
        self.background_failed: Callable[[StoreError], None] | None = None
        self._generation = 0  # completed loads; 0: not loaded yet
        self._loading: asyncio.Lock | None = None

    async def _eval(self, script: "_Script", keys: list[str], args: list):
        generation = self._generation
        if generation == 0:
            await self._load(generation)
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._load(generation)
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)

    async def _load(self, seen: int) -> None:
        """SCRIPT LOAD every script, unless another caller already did since generation ``seen``."""
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:
            if self._generation > seen:
                return
            sources = [s.source for s in (self._admit, self._settle, self._renew, self._lease, self._end_lease, self._learn,
                                          self._reserve_spend, self._adjust_spend)]
            if self._fast is not None:  # one round trip, beside the admissions rather than in redis-py's pool
                for reply in await self._fast.execute([(b"SCRIPT", b"LOAD", source) for source in sources]):
                    if isinstance(reply, Exception):
                        raise reply
            else:
                for source in sources:
                    await self.client.script_load(source)
            self._generation += 1

    async def admit(self, rid: str, buckets: Sequence[Bucket], amounts: Sequence[int]) -> AdmitResult:
        for amount in amounts:
            check_amount(amount, "tokens", 1)
        if not self.cluster:
            return await self._admit_one(rid, buckets, amounts)
        groups = _by_tag(buckets)
        if len(groups) == 1:
            return await self._admit_one(rid, buckets, amounts)
        results = await asyncio.gather(
            *(self._admit_one(rid, [buckets[i] for i in idx], [amounts[i] for i in idx]) for idx in groups),
            return_exceptions=True,
        )
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        refused = next(((idx, r) for idx, r in zip(groups, results) if isinstance(r, AdmitResult) and not r.admitted), None)
        if failed is not None or refused is not None:
            undo = [buckets[i] for idx, r in zip(groups, results) if isinstance(r, AdmitResult) and r.admitted for i in idx]
            if undo:
                await self.settle(rid, undo, None)
            if failed is not None:
                raise failed if isinstance(failed, StoreError) else StoreError(str(failed))
            idx, result = refused
            return AdmitResult(idx[result.refused], result.retry_ms, [], [])
        remaining = [0] * len(buckets)
        resets = [0] * len(buckets)
        for idx, result in zip(groups, results):
            for local, i in enumerate(idx):
                remaining[i], resets[i] = result.remaining[local], result.reset_ms[local]
        return AdmitResult(-1, 0, remaining, resets)

    async def _admit_one(self, rid: str, buckets: Sequence[Bucket], amounts: Sequence[int]) -> AdmitResult:
        keys, args = _call_args(rid, buckets, _tokens(buckets, amounts))
        try:
            if self._pending or self._fast is not None:
                out = await self._with_pending(self._admit, keys, args)
            else:
                out = await self._eval(self._admit, keys, args)
        except _FAILURES as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from None
        return AdmitResult(int(out[0]), int(out[1]), [int(v) for v in out[2::2]], [int(v) for v in out[3::2]])

    async def settle(self, rid: str, buckets: Sequence[Bucket], tokens: int | None) -> None:
        """On a standalone server settles ride along with the next admission (or go out within
        ``SETTLE_DELAY_S``), so a request costs one round trip, not two."""
        extra = "-" if tokens is None else check_amount(tokens, "used tokens", 0)
        if self.cluster:
            await self._each_group(self._settle, rid, buckets, extra)
            return
        self._queue(self._settle, *_call_args(rid, buckets, extra))

    def _queue(self, script: "_Script", keys: list[str], args: list) -> None:
        self._pending.append((script, keys, args))
        self._arm()

    def _arm(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(SETTLE_DELAY_S, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush = None
        self._written.clear()
        if self._pending or self._learns:
            task = asyncio.get_running_loop().create_task(self.flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    def _take(self) -> list[tuple[_Script, list[str], list]]:
        """The queued writes, leaving the queue empty (reports arriving from now on queue anew)."""
        pending, self._pending = self._pending, []
        if self._learns:
            self._learns = {key: report for key, report in self._learns.items() if report.held}
        return pending

    def _release(self, key: str, report: _Report) -> None:
        report.held = False
        self._written.add(key)
        self._queue(self._learn, [key], report.args)

    async def flush(self) -> None:
        """Send queued writes (held reports too) now; lost ones (Redis gone) leave reservations to
        expire with their windows."""
        for key, report in self._learns.items():
            if report.held:
                self._release(key, report)
        pending = self._take()
        if not pending:
            return
        try:
            await self._retry_noscript(pending, await self._pipeline(pending, self._generation))
        except _FAILURES as exc:
            self._lost(len(pending), exc)

    def _lost(self, count: int, exc: Exception) -> None:
        """``count`` queued writes did not land (Redis did not answer): counted, and reported like
        any background failure, so the incident is logged as it was when each write was its own call."""
        self.dropped_writes += count
        if self.background_failed is not None:
            self.background_failed(StoreError(f"{type(exc).__name__}: {exc}"))

    async def _with_pending(self, script: "_Script", keys: list[str], args: list):
        """Queued writes first, then this admission, in one pipeline (one round trip)."""
        pending = self._take()
        generation = self._generation
        calls = [*pending, (script, keys, args)]
        try:
            results = await self._pipeline(calls, generation)
        except _FAILURES as exc:
            if pending:
                self._lost(len(pending), exc)
            raise
        if isinstance(results[-1], NoScriptError):
            await self._load(generation)
            await self._retry_noscript(pending, results)
            return await self._eval(script, keys, args)
        if isinstance(results[-1], Exception):
            raise results[-1]
        await self._retry_noscript(pending, results)
        return results[-1]

    async def _pipeline(self, calls: list[tuple[_Script, list[str], list]], generation: int) -> list:
        """Every call's reply in order, error replies as exception instances."""
        if self._fast is not None:
            results = await self._fast.execute([_evalsha(*call) for call in calls])
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:  # a restarted or flushed Redis: load the scripts, then once more, same connection
                await self._load(generation)
                again = await self._fast.execute([_evalsha(*calls[i]) for i in missing])
                for i, result in zip(missing, again):
                    results[i] = result
            return results
        pipe = self.client.pipeline(transaction=False)
        for call in calls:  # not pipe.evalsha: redis-py's Cluster pipeline refuses that method, not the command
            pipe.execute_command("EVALSHA", call[0].sha, len(call[1]), *call[1], *call[2])
        return await pipe.execute(raise_on_error=False)

    async def _retry_noscript(self, pending: list, results: list) -> None:
        for (script, keys, args), result in zip(pending, results):
            if isinstance(result, NoScriptError):
                await self._eval(script, keys, args)
            elif isinstance(result, Exception):  # an error reply (a caller's bad amount): Redis is fine
                self.dropped_writes += 1

    async def renew(self, rid: str, buckets: Sequence[Bucket]) -> None:
        await self._each_group(self._renew, rid, buckets, None)

    async def lease(self, rid: str, buckets: Sequence[Bucket], tokens: int, requests: int, lease_tokens: int,
                    slots: int, ahead_ms: int) -> LeaseGrant:
        """Borrow up to ``requests`` requests, ``lease_tokens`` tokens and ``slots`` concurrency slots
        of one scope's buckets in one call (with queued writes, as an admission): each bucket gives
        what it has room for, at least what one request of ``tokens`` needs, else it refuses as
        ``admit`` would. Window entries are stamped ``ahead_ms`` (at most 1000) ahead, the lease's end."""
        check_amount(tokens, "tokens", 1)
        for value, what in ((requests, "lease requests"), (lease_tokens, "lease tokens"), (slots, "lease slots")):
            check_amount(value, what, 1)
        if not 0 <= ahead_ms <= 1000:
            raise ValueError("a lease's window entries may be stamped at most 1000 ms ahead (the logs' expiry slack)")
        if len(_by_tag(buckets)) != 1:
            raise ValueError("a lease covers one scope (one hash tag)")
        keys, args = _call_args(rid, buckets, tokens)
        args += (requests, lease_tokens, slots, ahead_ms)
        try:
            if self._pending or self._fast is not None:
                out = await self._with_pending(self._lease, keys, args)
            else:
                out = await self._eval(self._lease, keys, args)
        except _FAILURES as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from None
        result = AdmitResult(int(out[0]), int(out[1]), [int(v) for v in out[5::2]], [int(v) for v in out[6::2]])
        if not result.admitted:
            return LeaseGrant(result)
        return LeaseGrant(result, int(out[2]), int(out[3]), int(out[4]))

    async def end_lease(self, rid: str, buckets: Sequence[Bucket], tokens: int, kept: int, granted: int,
                        held: int, slots: int) -> None:
        """A lease's unused part goes back: requests beyond the ``kept`` of ``granted``, slots beyond
        the ``held`` of ``slots``; its token entry becomes ``tokens`` (used, and reserved by requests
        still running). Queued like a settle on a standalone server."""
        keys, args = _call_args(rid, buckets, check_amount(tokens, "used tokens", 0))
        args += (kept, granted, held, slots)
        if not self.cluster:
            self._queue(self._end_lease, keys, args)
            return
        try:
            await self._eval(self._end_lease, keys, args)
        except _FAILURES as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from None

    async def _each_group(self, script, rid: str, buckets: Sequence[Bucket], extra) -> None:
        groups = _by_tag(buckets) if self.cluster else [range(len(buckets))]
        calls = []
        for idx in groups:
            group = [buckets[i] for i in idx]
            keys, args = _call_args(rid, group, 0 if extra is None else extra)
            calls.append(self._eval(script, keys, args))
        try:
            await asyncio.gather(*calls)
        except _FAILURES as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from None

    def learn(self, bucket: Bucket, windows: Sequence[ProviderWindowState], exhausted_ms: int) -> None:
        """Queued like a settle, on a Cluster too: learning costs no round trip of its own.

        A deployment's first report since the last ``SETTLE_DELAY_S`` tick rides with the next
        admission (which already obeys it); later ones in the same tick are held and go out with
        the tick, so a busy replica writes a deployment's word at most once a tick, not once a
        response (a response-sized write each time was a third of the Redis work per request). A
        report arriving while another is unsent merges into it (newer windows replace older ones,
        the longer exhaustion wins); one that blocks the deployment (a 429) is never held."""
        report = self._learns.get(bucket.key)
        if report is None:
            report = self._learns[bucket.key] = _Report({w.window: w for w in windows}, exhausted_ms)
            if exhausted_ms == 0 and bucket.key in self._written:
                report.held = True
                self._arm()
            else:
                self._release(bucket.key, report)
            return
        report.merge(windows, exhausted_ms)
        if exhausted_ms > 0 and report.held:
            self._release(bucket.key, report)

    async def reserve_spend(self, keys: Sequence[str], hard: Sequence[int], amount: int,
                            expire_at_ms: Sequence[int]) -> SpendResult:
        """One EVALSHA (with any queued settles in the same pipeline on a standalone server)."""
        args: list = [check_amount(amount, "a budget reservation", 0)]
        for limit, expiry in zip(hard, expire_at_ms):
            args += (limit, expiry)
        try:
            if self._pending or self._fast is not None:
                out = await self._with_pending(self._reserve_spend, list(keys), args)
            else:
                out = await self._eval(self._reserve_spend, list(keys), args)
        except _FAILURES as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from None
        return SpendResult(int(out[0]), [int(v) for v in out[1:]])

    async def adjust_spend(self, keys: Sequence[str], delta: int, expire_at_ms: Sequence[int]) -> None:
        """Queued like a settle on a standalone server: it rides with the next admission."""
        args = [check_amount(delta, "a budget adjustment", -MAX_AMOUNT), *expire_at_ms]
        if not self.cluster:
            self._queue(self._adjust_spend, list(keys), args)
            return
        try:
            await self._eval(self._adjust_spend, list(keys), args)
        except _FAILURES as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from None

    async def seed_spend(self, key: str, amount: int, expire_at_ms: int) -> None:
        try:
            await self.client.set(key, check_amount(amount, "a budget counter", 0), nx=True, pxat=expire_at_ms)
        except _FAILURES as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        await self.flush()
        if self._fast is not None:
            await self._fast.aclose()
        await self.client.aclose()


class _Report:
    """One deployment's unsent provider report; ``args`` is LEARN's ARGV, rebuilt in place on a merge."""

    __slots__ = ("args", "held", "windows")

    def __init__(self, windows: dict[str, ProviderWindowState], exhausted_ms: int) -> None:
        self.windows = windows
        self.args: list = []
        self.held = False
        self._build(exhausted_ms)

    def merge(self, windows: Sequence[ProviderWindowState], exhausted_ms: int) -> None:
        self.windows.update((w.window, w) for w in windows)
        self._build(max(self.args[0], exhausted_ms))

    def _build(self, exhausted_ms: int) -> None:
        args: list = [exhausted_ms]
        for w in self.windows.values():
            args += (w.window, w.kind, w.remaining, w.reset_ms)
        self.args[:] = args


class _Script:
    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


def _evalsha(script: _Script, keys: list[str], args: list) -> tuple:
    return (b"EVALSHA", script.sha, len(keys), *keys, *args)


def _by_tag(buckets: Sequence[Bucket]) -> list[list[int]]:
    """Bucket indexes grouped by hash tag, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, bucket in enumerate(buckets):
        groups.setdefault(bucket.tag, []).append(i)
    return list(groups.values())
