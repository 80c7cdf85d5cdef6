"""The in-memory twin of the Lua scripts: the embedded default and the fail-open fallback.

Same algorithm, same answers, for one process: a sliding-window log per window (kept in
admission order, so expiry pops from the left), a lease dict per concurrency limit, and the
provider's last word per deployment. No awaits inside an operation, so each is atomic on the
event loop exactly as a script is atomic in Redis.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy.store.base import (CONCURRENCY, COUNTED, MAX_AMOUNT, PROVIDER, REQUESTS, TOKENS, AdmitResult, Bucket, ProviderWindowState,
                              SpendResult, check_amount)


@dataclass(slots=True)
class _Log:
    entries: deque = field(default_factory=deque)   # (admitted at ms, rid), oldest first
    amounts: dict = field(default_factory=dict)     # rid -> amount still counted
    total: int = 0


@dataclass(slots=True)
class _Provider:
    windows: dict = field(default_factory=dict)     # window -> [kind, remaining, reset at ms]
    exhausted_until: int = 0


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryStore:
    """Per-process buckets; ``clock`` (ms) is injectable so tests can move time."""

    def __init__(self, clock=_now_ms) -> None:
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._leases: dict[str, dict[str, int]] = {}
        self._providers: dict[str, _Provider] = {}
        self._spend: dict[str, list[int]] = {}           # budget counter -> [micro-USD, expires at ms]
        self.background_failed = None                    # nothing is queued here: every write lands at once

    def _used(self, bucket: Bucket, now: int) -> int:
        if bucket.kind == CONCURRENCY:
            leases = self._leases.setdefault(bucket.key, {})
            for rid in [rid for rid, expiry in leases.items() if expiry <= now]:
                del leases[rid]
            return len(leases)
        log = self._logs.setdefault(bucket.key, _Log())
        cutoff = now - bucket.span_ms
        while log.entries and log.entries[0][0] <= cutoff:
            _, rid = log.entries.popleft()
            log.total -= log.amounts.pop(rid, 0)
        if bucket.kind == COUNTED:  # the requests in its token window's log
            return len(log.amounts)
        return log.total

    def _wait(self, bucket: Bucket, used: int, amount: int, now: int) -> int:
        if amount > bucket.limit:
            return -1
        if bucket.kind == CONCURRENCY:
            return max(1, min(1000, min(self._leases[bucket.key].values()) - now))
        log = self._logs[bucket.key]
        for stamp, rid in log.entries:
            if bucket.kind == COUNTED:
                used -= rid in log.amounts
            else:
                used -= log.amounts.get(rid, 0)
            if used + amount <= bucket.limit:
                return max(1, stamp + bucket.span_ms - now)
        return bucket.span_ms

    def _provider_wait(self, bucket: Bucket, tokens: int, now: int) -> int:
        state = self._providers.get(bucket.key)
        if state is None:
            return 0
        wait = max(0, state.exhausted_until - now)
        for kind, remaining, reset in state.windows.values():
            need = 1 if kind == "requests" else tokens
            if reset > now and remaining < need:
                wait = max(wait, reset - now)
        return wait

    async def admit(self, rid: str, buckets: Sequence[Bucket], amounts: Sequence[int]) -> AdmitResult:
        for amount in amounts:
            check_amount(amount, "tokens", 1)
        now = self._clock()
        used: list[int] = []
        for index, (bucket, amount) in enumerate(zip(buckets, amounts)):
            if bucket.kind == PROVIDER:
                wait = self._provider_wait(bucket, amount, now)
                if wait > 0:
                    return AdmitResult(index, wait, [], [])
                used.append(0)
                continue
            in_use = self._used(bucket, now)
            used.append(in_use)
            if in_use + amount > bucket.limit:
                return AdmitResult(index, self._wait(bucket, in_use, amount, now), [], [])
        remaining, resets = [], []
        for bucket, amount, in_use in zip(buckets, amounts, used):
            if bucket.kind == PROVIDER:
                state = self._providers.get(bucket.key)
                for window in state.windows.values() if state else ():
                    if window[2] > now:
                        window[1] -= 1 if window[0] == "requests" else amount
                remaining.append(-1)
                resets.append(-1)
            elif bucket.kind == CONCURRENCY:
                self._leases[bucket.key][rid] = now + bucket.span_ms
                remaining.append(bucket.limit - in_use - amount)
                resets.append(0)
            elif bucket.kind == COUNTED:  # its token window writes the entry
                log = self._logs[bucket.key]
                remaining.append(bucket.limit - in_use - amount)
                resets.append(max(0, (log.entries[0][0] if log.entries else now) + bucket.span_ms - now))
            else:
                log = self._logs[bucket.key]
                log.entries.append((now, rid))
                log.amounts[rid] = amount
                log.total += amount
                remaining.append(bucket.limit - in_use - amount)
                resets.append(max(0, log.entries[0][0] + bucket.span_ms - now))
        return AdmitResult(-1, 0, remaining, resets)

    async def settle(self, rid: str, buckets: Sequence[Bucket], tokens: int | None) -> None:
        if tokens is not None:
            check_amount(tokens, "used tokens", 0)
        for bucket in buckets:
            if bucket.kind == CONCURRENCY:
                self._leases.get(bucket.key, {}).pop(rid, None)
            elif bucket.kind == TOKENS or (bucket.kind == REQUESTS and tokens is None):
                log = self._logs.get(bucket.key)
                if log is None or rid not in log.amounts:
                    continue
                old = log.amounts[rid]
                if tokens is None:
                    del log.amounts[rid]  # its deque entry is skipped (amount 0) when it expires
                    log.total -= old
                else:
                    log.amounts[rid] = tokens
                    log.total += tokens - old

    async def renew(self, rid: str, buckets: Sequence[Bucket]) -> None:
        now = self._clock()
        for bucket in buckets:
            leases = self._leases.get(bucket.key)
            if bucket.kind == CONCURRENCY and leases and rid in leases:
                leases[rid] = now + bucket.span_ms

    def learn(self, bucket: Bucket, windows: Sequence[ProviderWindowState], exhausted_ms: int) -> None:
        now = self._clock()
        state = self._providers.setdefault(bucket.key, _Provider())
        if exhausted_ms > 0:
            state.exhausted_until = max(state.exhausted_until, now + exhausted_ms)
        for w in windows:
            state.windows[w.window] = [w.kind, w.remaining, now + w.reset_ms]

    def _spent(self, key: str, now: int) -> int:
        counter = self._spend.get(key)
        if counter is not None and counter[1] <= now:
            del self._spend[key]
            return 0
        return counter[0] if counter is not None else 0

    async def reserve_spend(self, keys: Sequence[str], hard: Sequence[int], amount: int,
                            expire_at_ms: Sequence[int]) -> SpendResult:
        check_amount(amount, "a budget reservation", 0)
        now = self._clock()
        spent = []
        for index, (key, limit) in enumerate(zip(keys, hard)):
            spent.append(self._spent(key, now))
            if limit >= 0 and spent[index] + amount > limit:
                return SpendResult(index, [spent[index]])
        for key, total, expiry in zip(keys, spent, expire_at_ms):
            self._spend[key] = [total + amount, expiry]
        return SpendResult(-1, spent)

    async def adjust_spend(self, keys: Sequence[str], delta: int, expire_at_ms: Sequence[int]) -> None:
        check_amount(delta, "a budget adjustment", -MAX_AMOUNT)
        now = self._clock()
        for key, expiry in zip(keys, expire_at_ms):
            self._spend[key] = [self._spent(key, now) + delta, expiry]

    async def seed_spend(self, key: str, amount: int, expire_at_ms: int) -> None:
        check_amount(amount, "a budget counter", 0)
        now = self._clock()
        if key not in self._spend or self._spend[key][1] <= now:
            self._spend[key] = [amount, expire_at_ms]

    async def aclose(self) -> None:
        self._spend.clear()
        self._logs.clear()
        self._leases.clear()
        self._providers.clear()
