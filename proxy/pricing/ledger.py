"""The usage ledger: tokens (not dollars) by hour x deployment x model x key x team.

Recording a finished request appends one tuple to a list; a background task folds the
list into per-row increments and writes them in one pipelined transaction (Redis) or
dict update (memory). If the write fails the increments stay in a bounded buffer and go
out with the next flush, so an outage delays usage but loses none; rows that would
exceed the buffer are dropped and counted in ``counters``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from proxy.call import Outcome
from proxy.pricing.schedules import Tokens

log = logging.getLogger("laneway")

SEP = "\x1f"  # between the parts of a Redis hash field; never in a name from a policy
KEY_PREFIX = "laneway:usage:"
_ROW_MARK = SEP + "requests"
_SLICE = 500


class LedgerUnavailable(Exception):
    """The ledger's store cannot be read right now (e.g. Redis is down); recording goes on buffered."""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One hour of one (deployment, model, key, team)'s usage."""

    hour: int  # hours since the Unix epoch, UTC
    deployment: str
    model: str
    key: str
    team: str  # "" when the key has no team
    tokens: Tokens


@dataclass(slots=True)
class LedgerCounters:
    """Plain counters for the metrics exporter and health checks."""

    recorded: int = 0           # requests recorded
    flushes: int = 0            # successful writes
    flush_errors: int = 0       # failed writes (the rows stayed buffered)
    buffered_rows: int = 0        # rows waiting for the store right now
    overflow_requests: int = 0  # requests whose usage was dropped because the buffer was full
    overflow_tokens: int = 0


# (hour, "deployment SEP model SEP key SEP team SEP kind") -> increment
Batch = dict[tuple[int, str], int]


class UsageStore(Protocol):
    async def add(self, batch: Batch) -> None: ...
    async def read(self, first_hour: int, last_hour: int, progress: Callable[[int, int], None] | None = None) -> list[UsageRow]: ...
    async def close(self) -> None: ...


class MemoryUsageStore:
    """The in-process twin of the Redis store (one replica, lost on restart)."""

    def __init__(self) -> None:
        self.hours: dict[int, dict[str, int]] = {}

    async def add(self, batch: Batch) -> None:
        for (hour, name), amount in batch.items():
            row = self.hours.setdefault(hour, {})
            row[name] = row.get(name, 0) + amount

    async def read(self, first_hour: int, last_hour: int, progress: Callable[[int, int], None] | None = None) -> list[UsageRow]:
        return rows_from_fields((h, fields) for h, fields in sorted(self.hours.items()) if first_hour <= h <= last_hour)

    async def close(self) -> None:
        return None


class RedisUsageStore:
    """One hash per hour (``laneway:usage:{<hour>}``), HINCRBY per field, in a MULTI/EXEC pipeline.

    The transaction makes a batch all-or-nothing, so a batch that failed can be retried
    without counting part of it twice.
    """

    def __init__(self, url: str, retention_days: int = 400, timeout_s: float = 1.0) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.ttl_s = retention_days * 86400

    async def add(self, batch: Batch) -> None:
        pipe = self.client.pipeline(transaction=True)
        hours = set()
        for (hour, name), amount in batch.items():
            pipe.hincrby(hour_key(hour), name, amount)
            hours.add(hour)
        for hour in hours:
            pipe.expire(hour_key(hour), self.ttl_s)
        await pipe.execute()

    async def read(self, first_hour: int, last_hour: int, progress: Callable[[int, int], None] | None = None) -> list[UsageRow]:
        import redis

        hours = list(range(first_hour, last_hour + 1))
        found: list[tuple[int, dict[str, int]]] = []
        for start in range(0, len(hours), 256):
            chunk = hours[start : start + 256]
            pipe = self.client.pipeline(transaction=False)
            for hour in chunk:
                pipe.hgetall(hour_key(hour))
            try:
                replies = await pipe.execute()
            except (redis.RedisError, OSError) as exc:
                raise LedgerUnavailable(f"Redis did not answer ({type(exc).__name__})") from None
            for hour, raw in zip(chunk, replies):
                if raw:
                    found.append((hour, {k.decode(): int(v) for k, v in raw.items()}))
            if progress is not None:
                progress(min(start + 256, len(hours)), len(hours))
        return rows_from_fields(found)

    async def close(self) -> None:
        await self.client.aclose()


def hour_key(hour: int) -> str:
    return f"{KEY_PREFIX}{{{hour}}}"


def rows_from_fields(hours: Iterable[tuple[int, dict[str, int]]]) -> list[UsageRow]:
    rows: list[UsageRow] = []
    for hour, fields in hours:
        grouped: dict[tuple[str, ...], Tokens] = {}
        for name, amount in fields.items():
            *parts, kind = name.split(SEP)
            tokens = grouped.get(tuple(parts))
            if tokens is None:
                tokens = grouped[tuple(parts)] = Tokens()
            setattr(tokens, kind, getattr(tokens, kind) + amount)
        rows.extend(UsageRow(hour, *parts, tokens) for parts, tokens in grouped.items())
    return rows


@dataclass(slots=True)
class Ledger:
    """Observer of finished requests (``record``) plus the background flusher that writes them."""

    store: UsageStore
    model_of: Callable[[str], str]  # deployment name -> upstream model id (from the active policy)
    flush_interval_s: float = 1.0
    max_buffered: int = 100_000
    clock: Callable[[], float] = time.time
    counters: LedgerCounters = field(default_factory=LedgerCounters)
    on_row: Callable[[UsageRow], None] | None = None  # sees each recorded request, in the flusher
    _pending: list[tuple] = field(default_factory=list)
    _buffer: Batch = field(default_factory=dict)
    _rows: int = 0  # distinct rows in _buffer (each has a "requests" field)
    _lock: asyncio.Lock | None = None
    _task: asyncio.Task | None = None

    def record(self, outcome: Outcome) -> None:
        """Note one finished request; O(1), no I/O (runs on the response path)."""
        deployment = outcome.deployment
        if deployment is None:
            return
        self._pending.append((
            int(self.clock() // 3600), deployment, outcome.key_name, outcome.team or "",
            outcome.input_tokens, outcome.cached_tokens, outcome.output_tokens, outcome.reasoning_tokens,
            outcome.usage_reported,
        ))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the flusher and write what is left (one attempt: a dead store keeps it buffered)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if not await self.flush():
            log.error("usage ledger: the store is unavailable at shutdown; %d rows of usage were not written",
                      self._rows)
        await self.store.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def flush(self) -> bool:
        """Write everything recorded so far; False if the store refused (the rows stay buffered)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await self._fold()
            if not self._buffer:
                return True
            batch, self._buffer, self._rows = self._buffer, {}, 0
            try:
                await self.store.add(batch)
            except Exception as exc:
                self.counters.flush_errors += 1
                for item, amount in batch.items():
                    self._buffer[item] = self._buffer.get(item, 0) + amount
                self._rows = sum(1 for _, name in self._buffer if name.endswith(_ROW_MARK))
                self.counters.buffered_rows = self._rows
                if self.counters.flush_errors == 1 or self.counters.flush_errors % 100 == 0:
                    log.warning("usage ledger: cannot write to its store (%s); %d rows buffered, will retry",
                                type(exc).__name__, self._rows)
                return False
            self.counters.flushes += 1
            self.counters.buffered_rows = self._rows
            return True

    async def _fold(self) -> None:
        """Pending tuples -> per-field increments in the buffer (bounded by max_buffered distinct rows),
        yielding to the event loop every _SLICE requests so a busy second does not stall responses."""
        pending, self._pending = self._pending, []
        buffer = self._buffer
        for index, (hour, deployment, key, team, inp, cached, out, reasoning, reported) in enumerate(pending):
            if index and index % _SLICE == 0:
                await asyncio.sleep(0)
            model = self.model_of(deployment)
            prefix = SEP.join((deployment, model, key, team)) + SEP
            probe = (hour, prefix + "requests")
            if probe not in buffer:
                if self._rows >= self.max_buffered:
                    self.counters.overflow_requests += 1
                    self.counters.overflow_tokens += inp + out
                    continue
                self._rows += 1
            self.counters.recorded += 1
            counts = (("input", inp), ("cached", cached), ("output", out), ("reasoning", reasoning), ("requests", 1),
                      ("estimated", 0 if reported else 1))
            for kind, amount in counts:
                if amount:
                    item = (hour, prefix + kind)
                    buffer[item] = buffer.get(item, 0) + amount
            if self.on_row is not None:
                self.on_row(UsageRow(hour, deployment, model, key, team, Tokens(inp, cached, out, reasoning, 1, int(not reported))))
        self.counters.buffered_rows = self._rows

    async def read(self, first_hour: int, last_hour: int, progress: Callable[[int, int], None] | None = None) -> list[UsageRow]:
        """Usage in [first_hour, last_hour] as the store has it (after writing what is pending)."""
        await self.flush()
        return await self.store.read(first_hour, last_hour, progress)


def open_store(redis_url: str | None, retention_days: int = 400) -> UsageStore:
    return RedisUsageStore(redis_url, retention_days) if redis_url else MemoryUsageStore()
