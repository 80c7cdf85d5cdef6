"""proxy/pricing/ledger.py: a shutdown that cannot write keeps usage for the next start."""
from __future__ import annotations

import asyncio
import logging

from proxy.call import Outcome
from proxy.pricing.ledger import SEP, Ledger
from proxy.store.journal import Journal
from proxy.store.usage import MemoryUsageStore


class DeadStore(MemoryUsageStore):
    def __str__(self) -> str:
        return "redis://ledger:6379/0"

    async def add(self, batch, stamp=None):
        raise ConnectionError("down")


class LiveStore(MemoryUsageStore):
    def __str__(self) -> str:
        return "redis://ledger:6379/0"


def outcome(deployment: str, inp: int, out: int, key: str = "k") -> Outcome:
    return Outcome("r", "chat", "route", key, None, deployment=deployment, input_tokens=inp, output_tokens=out, status=200)


def totals(store: MemoryUsageStore) -> dict[str, int]:
    found: dict[str, int] = {}
    for fields in store.hours.values():
        for name, amount in fields.items():
            kind = name.split(SEP)[-1]
            found[kind] = found.get(kind, 0) + amount
    return found


async def serve_and_stop(ledger: Ledger, outcomes: list[Outcome]) -> None:
    ledger.start()
    for item in outcomes:
        ledger.record(item)
    await asyncio.sleep(0.05)  # a few flushes fail meanwhile
    await ledger.stop()


def test_usage_a_dead_store_could_not_take_is_written_by_the_next_start(tmp_path, caplog) -> None:
    journal = Journal(tmp_path, "redis://ledger:6379/0")
    dead = Ledger(DeadStore(), lambda name: name, flush_interval_s=0.01, journal=journal)
    with caplog.at_level(logging.ERROR, "laneway"):
        asyncio.run(serve_and_stop(dead, [outcome("a", 10, 5), outcome("b", 7, 1), outcome("a", 1, 1)]))
    assert any("kept in" in r.getMessage() for r in caplog.records)
    live_store = LiveStore()
    live = Ledger(live_store, lambda name: name, flush_interval_s=0.01, journal=Journal(tmp_path, "redis://ledger:6379/0"))
    asyncio.run(serve_and_stop(live, [outcome("a", 100, 50)]))
    assert totals(live_store) == {"input": 118, "output": 57, "requests": 4, "estimated": 4}
    # Written once: a third start replays nothing.
    third_store = LiveStore()
    asyncio.run(serve_and_stop(Ledger(third_store, lambda n: n, journal=Journal(tmp_path, "redis://ledger:6379/0")), []))
    assert third_store.hours == {}


def test_a_start_whose_store_is_still_down_spills_the_replayed_usage_again(tmp_path) -> None:
    for _ in range(3):  # restarts during one long outage
        asyncio.run(serve_and_stop(Ledger(DeadStore(), lambda n: n, flush_interval_s=0.01,
                                          journal=Journal(tmp_path, "redis://ledger:6379/0")), [outcome("a", 10, 1)]))
    assert len(list(tmp_path.glob("unwritten-*.json"))) == 1
    store = LiveStore()
    asyncio.run(serve_and_stop(Ledger(store, lambda n: n, journal=Journal(tmp_path, "redis://ledger:6379/0")), []))
    assert totals(store)["input"] == 30 and totals(store)["requests"] == 3


def test_without_a_writable_journal_the_loss_is_logged_with_its_size(tmp_path, caplog) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    ledger = Ledger(DeadStore(), lambda n: n, flush_interval_s=0.01, journal=Journal(blocked, "x"))
    with caplog.at_level(logging.ERROR, "laneway"):
        asyncio.run(serve_and_stop(ledger, [outcome("a", 1, 1), outcome("b", 1, 1)]))
    assert any("journal cannot be written" in r.getMessage() and "2 rows" in r.getMessage() for r in caplog.records)


def test_a_batch_sent_before_the_restart_is_resent_under_its_old_stamp(tmp_path) -> None:
    class Recording(LiveStore):
        def __init__(self) -> None:
            super().__init__()
            self.stamps: list = []

        async def add(self, batch, stamp=None):
            self.stamps.append(stamp)
            await super().add(batch, stamp)

    dead = Ledger(DeadStore(), lambda n: n, flush_interval_s=0.01, journal=Journal(tmp_path, "redis://ledger:6379/0"))
    asyncio.run(serve_and_stop(dead, [outcome("a", 10, 1)]))
    store = Recording()
    asyncio.run(serve_and_stop(Ledger(store, lambda n: n, journal=Journal(tmp_path, "redis://ledger:6379/0")),
                               [outcome("b", 5, 5)]))
    assert store.stamps[0].writer == dead.writer and store.stamps[0].seq == 1   # idempotent if it had landed
    assert all(stamp.writer != dead.writer for stamp in store.stamps[1:])
    assert totals(store)["input"] == 15
