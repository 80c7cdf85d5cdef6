"""The usage ledger: tokens (not dollars) by hour x deployment x model x key x team.

Recording a finished request appends one tuple to a list; a background task folds the
list into per-row increments and writes them as one batch to the ledger's store
(proxy/store/usage.py: Redis, or a local SQLite file without Redis). If the write fails the
batch is kept, exactly as sent, and sent again before anything newer, so an outage delays
usage but loses none; rows that would exceed the bound are dropped and counted in ``counters``.
Each batch carries a ``Stamp`` (this ledger's writer id and the batch's sequence number): a
store applies a stamp once, so a batch whose write was applied but whose reply was lost is
not counted twice when it is sent again.
A shutdown that cannot write spills its unsent batches, stamps and all, to the local journal
(proxy/store/journal.py), and the next start with the same store sends them.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from proxy.call import Outcome
from proxy.pricing.schedules import Tokens
from proxy.store.journal import Journal
from proxy.store.usage import Batch, LedgerUnavailable, Progress, Stamp, UsageStore

STOP_S = 5.0  # the longest shutdown waits for the last write of usage
log = logging.getLogger("laneway")

SEP = "\x1f"  # between the parts of a store's field name; never in a name from a policy
_ROW_MARK = SEP + "requests"
_SLICE = 500


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
    journal: Journal | None = None  # where a shutdown that cannot write leaves its unsent batches
    writer: str = field(default_factory=lambda: uuid.uuid4().hex[:16])  # this ledger's half of every Stamp
    _pending: list[tuple] = field(default_factory=list)
    _buffer: Batch = field(default_factory=dict)   # folded, not yet sent
    _unsent: list[tuple[Stamp, Batch]] = field(default_factory=list)  # stamped, not yet taken: (re)sent as is
    _unsent_rows: set = field(default_factory=set)  # the row marks of _unsent's batches
    _rows: int = 0  # distinct rows in _buffer and _unsent (each has a "requests" field)
    _seq: int = 0
    _lock: asyncio.Lock | None = None
    _task: asyncio.Task | None = None
    _stopping: asyncio.Event | None = None

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
        """Start the flusher, with what an earlier shutdown spilled to the journal as its first batches
        (under their own stamps, so a batch whose write did land before the restart counts once)."""
        if self.journal is not None:
            try:
                self._unsent.extend(self.journal.claim())
                self._recount()
            except OSError as exc:
                log.error("usage ledger: cannot read its journal in %s (%s)", self.journal.directory, exc)
            if self._rows:
                log.warning("usage ledger: %d rows of usage an earlier shutdown could not write are written now", self._rows)
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Let the flusher write what is left and end (one attempt: a dead store keeps it buffered).

        A write in flight is never cancelled (redis-py can hang when a command is cancelled
        mid-way, which hung worker shutdown), and shutdown never waits past STOP_S for the store."""
        written = True
        try:
            async with asyncio.timeout(STOP_S):
                if self._task is not None:
                    self._stopping.set()
                    written = await self._task
                    self._task = None
                else:
                    written = await self.flush()
                await self.store.close()
        except TimeoutError:
            written = False
        if not written:
            await self._spill()

    async def _spill(self) -> None:
        """The store could not take the last write: keep the unsent batches in the journal for the next start."""
        await self._fold()
        self._seal()
        rows = self._rows
        if self.journal is not None and self._unsent:
            try:
                path = self.journal.spill(self._unsent)
            except OSError as exc:
                log.error("usage ledger: the store is unavailable at shutdown and the journal cannot be written (%s); "
                          "%d rows of usage were not written", exc, rows)
                return
            self._unsent = []
            self._recount()
            log.error("usage ledger: the store is unavailable at shutdown; %d rows of usage were kept in %s and are "
                      "written by the next start with the same store", rows, path)
            return
        log.error("usage ledger: the store is unavailable at shutdown; %d rows of usage were not written", rows)

    async def _run(self) -> bool:
        """Flush every flush_interval_s; once stopping, one last flush, whose result it returns."""
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.flush_interval_s)
            except TimeoutError:
                await self.flush()
                continue
            return await self.flush()

    async def flush(self) -> bool:
        """Write everything recorded so far, batches refused earlier first; False if the store refused."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await self._fold()
            self._seal()
            while self._unsent:
                stamp, batch = self._unsent[0]
                try:
                    await self.store.add(batch, stamp)
                except Exception as exc:
                    self._refused(exc)
                    return False
                self._unsent.pop(0)
                self.counters.flushes += 1
            self._recount()
            return True

    def _refused(self, exc: Exception) -> None:
        """The first unsent batch was refused: keep what the store did not take (the other hours were written)."""
        self.counters.flush_errors += 1
        if isinstance(exc, LedgerUnavailable) and exc.unwritten:
            stamp, _ = self._unsent[0]
            self._unsent[0] = (stamp, exc.unwritten)
        self._recount()
        if self.counters.flush_errors == 1 or self.counters.flush_errors % 100 == 0:
            log.warning("usage ledger: cannot write to its store (%s); %d rows buffered, will retry",
                        type(exc).__name__, self._rows)

    def _seal(self) -> None:
        """What was folded becomes the next batch to send, under the next stamp."""
        if self._buffer:
            self._seq += 1
            self._unsent.append((Stamp(self.writer, self._seq), self._buffer))
            self._buffer = {}

    def _recount(self) -> None:
        self._unsent_rows = {item for _, batch in self._unsent for item in batch if item[1].endswith(_ROW_MARK)}
        self._rows = len(self._unsent_rows | {item for item in self._buffer if item[1].endswith(_ROW_MARK)})
        self.counters.buffered_rows = self._rows

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
            if probe not in buffer and probe not in self._unsent_rows:
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

    async def read(self, first_hour: int, last_hour: int, progress: Progress | None = None) -> list[UsageRow]:
        """Usage in [first_hour, last_hour] as the store has it (after writing what is pending)."""
        await self.flush()
        return rows_from_fields(await self.store.read(first_hour, last_hour, progress))
