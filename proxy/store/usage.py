"""Where the usage ledger's counts live: Redis (standalone or Cluster), a local SQLite file, or memory.

A batch maps (hour, field) to an increment; a field is an opaque name the ledger composes
(deployment, model, key, team and token kind). Every store adds a batch so that a batch
that failed can be retried without counting any part of it twice, and reads back the
fields of a range of hours.

- Redis: one hash per hour (``laneway:usage:{<hour>}``), an hour's increments applied by one
  script call (HINCRBY each, atomically); each hour is its own hash slot, so a batch is one
  pipeline that a Cluster splits by node. An hour that failed is reported back
  (``LedgerUnavailable.unwritten``) while the others stay written. A batch's ``Stamp`` is
  recorded with the hour it was applied to (``laneway:usage-writers:{<hour>}``, writer -> last
  sequence number, same slot), and a stamp already applied is not applied again: the ledger
  resends a batch whose reply was lost without counting it twice. The client never retries a
  write itself; the ledger does, with the same stamp.
- SQLite, the embedded default without Redis: one row per (hour, field) in a WAL-mode file,
  one transaction per batch, so a restart loses nothing and ``laneway cost report`` reads it.
- Memory: the fallback when that file cannot be opened (one process, lost on restart).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from redis.exceptions import RedisError

from proxy.config.schema import Policy, StoreSettings
from proxy.store import connect

log = logging.getLogger("laneway")

KEY_PREFIX = "laneway:usage:"
WRITERS_PREFIX = "laneway:usage-writers:"
WRITERS_TTL_S = 7 * 86400  # how long a stamp is remembered: longer than any batch waits to be resent
READ_BATCH = 256  # hours per pipelined read
STATE_DIR_ENV = "LANEWAY_STATE_DIR"
SQLITE_NAME = "usage.sqlite3"

# (hour, field) -> increment
Batch = dict[tuple[int, str], int]
# (hour, {field: count}), oldest first, hours with no usage left out
Hours = list[tuple[int, dict[str, int]]]
Progress = Callable[[int, int], None]  # (hours read, hours in all)


@dataclass(frozen=True, slots=True)
class Stamp:
    """Which ledger sent a batch, and its sequence number there: a store applies each stamp once."""

    writer: str
    seq: int


class LedgerUnavailable(Exception):
    """The ledger's store cannot be written or read right now; recording goes on buffered.

    ``unwritten`` is the part of a batch the store did not take (all of it unless some hours
    were written)."""

    def __init__(self, message: str, unwritten: Batch | None = None) -> None:
        super().__init__(message)
        self.unwritten = unwritten or {}


class UsageStore(Protocol):
    async def add(self, batch: Batch, stamp: Stamp | None = None) -> None:
        """All of ``batch`` or, raising LedgerUnavailable, the part not written; a stamp applied once."""
    async def read(self, first_hour: int, last_hour: int, progress: Progress | None = None) -> Hours: ...
    async def close(self) -> None: ...


class MemoryUsageStore:
    """One process's counts, lost on restart."""

    def __init__(self) -> None:
        self.hours: dict[int, dict[str, int]] = {}

    def __str__(self) -> str:
        return "memory"

    async def add(self, batch: Batch, stamp: Stamp | None = None) -> None:
        """One process, no lost replies: the stamp is not needed."""
        for (hour, name), amount in batch.items():
            row = self.hours.setdefault(hour, {})
            row[name] = row.get(name, 0) + amount

    async def read(self, first_hour: int, last_hour: int, progress: Progress | None = None) -> Hours:
        return [(h, dict(fields)) for h, fields in sorted(self.hours.items()) if first_hour <= h <= last_hour]

    async def close(self) -> None:
        return None


class SqliteUsageStore:
    """Counts in a local SQLite file; several workers may share it (SQLite serialises the writers).

    The calls run in a thread so a slow disk never stalls the event loop; ``create=False``
    (the CLI) refuses a file that does not exist rather than reporting an empty ledger.
    """

    def __init__(self, path: Path, retention_days: int = 400, *, create: bool = True) -> None:
        self.path = path
        self.retention_hours = retention_days * 24
        try:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.is_file():
                raise LedgerUnavailable(f"no usage ledger at {path}")
            self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a power cut may lose the last flush, never corrupt
            self._db.execute("CREATE TABLE IF NOT EXISTS usage (hour INTEGER NOT NULL, field TEXT NOT NULL, "
                             "amount INTEGER NOT NULL, PRIMARY KEY (hour, field)) WITHOUT ROWID")
        except (sqlite3.Error, OSError) as exc:
            raise LedgerUnavailable(f"cannot open the usage ledger {path}: {exc}") from None
        self._lock = threading.Lock()  # one connection; calls come from the default executor's threads
        self._pruned = 0  # the newest hour whose expired rows were deleted

    def __str__(self) -> str:
        return str(self.path)

    async def add(self, batch: Batch, stamp: Stamp | None = None) -> None:
        """One local transaction: it commits or raises, so a stamp is not needed."""
        await asyncio.to_thread(self._add, batch)

    def _add(self, batch: Batch) -> None:
        newest = max(hour for hour, _ in batch)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (hour, field) DO UPDATE SET amount = amount + excluded.amount",
                    [(hour, name, amount) for (hour, name), amount in batch.items()])
                if newest > self._pruned:
                    self._db.execute("DELETE FROM usage WHERE hour <= ?", (newest - self.retention_hours,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise LedgerUnavailable(f"SQLite: {exc}", batch) from None
            self._pruned = max(self._pruned, newest)

    async def read(self, first_hour: int, last_hour: int, progress: Progress | None = None) -> Hours:
        return await asyncio.to_thread(self._read, first_hour, last_hour)

    def _read(self, first_hour: int, last_hour: int) -> Hours:
        with self._lock:
            try:
                cursor = self._db.execute("SELECT hour, field, amount FROM usage WHERE hour BETWEEN ? AND ? ORDER BY hour",
                                          (first_hour, last_hour))
                found: dict[int, dict[str, int]] = {}
                for hour, name, amount in cursor:
                    found.setdefault(hour, {})[name] = amount
            except sqlite3.Error as exc:
                raise LedgerUnavailable(f"SQLite: {exc}") from None
        return list(found.items())

    async def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisUsageStore:
    """One hash per hour; see the module docstring."""

    def __init__(self, target: connect.Target, retention_days: int = 400) -> None:
        self.target = target
        self.client = connect.client(target)
        self.ttl_s = retention_days * 86400

    def __str__(self) -> str:
        return str(self.target)

    async def add(self, batch: Batch, stamp: Stamp | None = None) -> None:
        """One pipeline of one script call per hour (a Cluster pipeline: one per node)."""
        by_hour: dict[int, list] = {}
        for (hour, name), amount in batch.items():
            by_hour.setdefault(hour, []).extend((name, amount))
        writer, seq = (stamp.writer, stamp.seq) if stamp is not None else ("", 0)
        pipe = self.client.pipeline(transaction=False)
        for hour, fields in by_hour.items():
            pipe.eval(_ADD_HOUR, 2, hour_key(hour), f"{WRITERS_PREFIX}{{{hour}}}", self.ttl_s, WRITERS_TTL_S,
                      writer, seq, *fields)
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise LedgerUnavailable(f"Redis did not answer ({type(exc).__name__})", batch) from None
        failed = {hour: result for hour, result in zip(by_hour, results) if isinstance(result, Exception)}
        if failed:
            unwritten = {(hour, name): amount for (hour, name), amount in batch.items() if hour in failed}
            raise LedgerUnavailable(f"Redis refused {len(failed)} of {len(by_hour)} hours "
                                    f"({type(next(iter(failed.values()))).__name__})", unwritten)

    async def read(self, first_hour: int, last_hour: int, progress: Progress | None = None) -> Hours:
        """HGETALL per hour, ``READ_BATCH`` hours per pipeline (a Cluster pipeline splits by node)."""
        total = last_hour - first_hour + 1
        found: Hours = []
        for start in range(first_hour, last_hour + 1, READ_BATCH):
            chunk = range(start, min(start + READ_BATCH, last_hour + 1))
            pipe = self.client.pipeline(transaction=False)
            for hour in chunk:
                pipe.hgetall(hour_key(hour))
            try:
                replies = await pipe.execute()
            except (RedisError, OSError) as exc:
                raise LedgerUnavailable(f"Redis did not answer ({type(exc).__name__})") from None
            found += [(hour, {k.decode(): int(v) for k, v in raw.items()}) for hour, raw in zip(chunk, replies) if raw]
            if progress is not None:
                progress(chunk.stop - first_hour, total)
        return found

    async def close(self) -> None:
        await self.client.aclose()


# KEYS[1]: an hour's hash, KEYS[2]: the hour's writers (writer -> last sequence number applied), one
# slot. ARGV: the hash's time-to-live (s), the writers' time-to-live, writer ("": unstamped), sequence
# number, then field, increment pairs. Returns 0 for a stamp applied before (nothing is added again).
# A script is not rolled back on an error: the stamp is recorded only after the increments.
_ADD_HOUR = """
if ARGV[3] ~= '' and tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0') >= tonumber(ARGV[4]) then
  return 0
end
for i = 5, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
"""


def hour_key(hour: int) -> str:
    return f"{KEY_PREFIX}{{{hour}}}"


def state_dir() -> Path:
    """Where a worker keeps local state: ``$LANEWAY_STATE_DIR``, else ``./.laneway``."""
    return Path(os.environ.get(STATE_DIR_ENV) or ".laneway")


def sqlite_path(settings: StoreSettings) -> Path:
    """``store.sqlite_path``, else ``usage.sqlite3`` in the state directory."""
    if settings.sqlite_path:
        return Path(settings.sqlite_path)
    return state_dir() / SQLITE_NAME


def open_usage_store(policy: Policy, *, timeout_s: float = connect.LEDGER_TIMEOUT_S, create: bool = True) -> UsageStore:
    """The policy's ledger store: its Redis if it names one, else the SQLite file.

    Raises LedgerUnavailable when the file cannot be opened (or, ``create=False``, does not exist)."""
    retention = policy.ledger.retention_days
    target = connect.ledger_target(policy, timeout_s)
    if target is not None:
        return RedisUsageStore(target, retention)
    return SqliteUsageStore(sqlite_path(policy.store), retention, create=create)
