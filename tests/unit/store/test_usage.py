"""proxy/store/usage.py without Redis: the SQLite file the embedded default keeps its ledger in."""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from proxy.config import parse_policy
from proxy.store.usage import (LedgerUnavailable, MemoryUsageStore, RedisUsageStore, SqliteUsageStore, open_usage_store,
                               sqlite_path)

HOUR = 500_000


def run(coro):
    return asyncio.run(coro)


def test_sqlite_adds_batches_and_reads_a_range(tmp_path):
    async def main():
        store = SqliteUsageStore(tmp_path / "state" / "usage.sqlite3")
        await store.add({(HOUR, "a"): 3, (HOUR, "b"): 1, (HOUR + 1, "a"): 7})
        await store.add({(HOUR, "a"): 2, (HOUR + 5, "c"): 1})
        try:
            return await store.read(HOUR, HOUR + 1), await store.read(HOUR + 2, HOUR + 9)
        finally:
            await store.close()

    assert run(main()) == ([(HOUR, {"a": 5, "b": 1}), (HOUR + 1, {"a": 7})], [(HOUR + 5, {"c": 1})])


def test_sqlite_survives_a_restart_and_is_shared_by_workers(tmp_path):
    """Two stores on one file (two workers, or a restart) add up; the file is in WAL mode."""
    path = tmp_path / "usage.sqlite3"

    async def main():
        first, second = SqliteUsageStore(path), SqliteUsageStore(path)
        await asyncio.gather(*(store.add({(HOUR, "requests"): 1}) for store in [first, second] * 50))
        await first.close()
        await second.close()
        again = SqliteUsageStore(path, create=False)
        try:
            return await again.read(HOUR, HOUR)
        finally:
            await again.close()

    assert run(main()) == [(HOUR, {"requests": 100})]
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_sqlite_drops_hours_past_retention(tmp_path):
    async def main():
        store = SqliteUsageStore(tmp_path / "usage.sqlite3", retention_days=1)
        await store.add({(HOUR, "a"): 1, (HOUR + 23, "a"): 1})
        await store.add({(HOUR + 24, "a"): 1})
        try:
            return await store.read(0, HOUR + 100)
        finally:
            await store.close()

    assert [hour for hour, _ in run(main())] == [HOUR + 23, HOUR + 24]


def test_a_missing_or_unopenable_file_is_reported(tmp_path):
    with pytest.raises(LedgerUnavailable, match="no usage ledger at"):
        SqliteUsageStore(tmp_path / "absent.sqlite3", create=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(LedgerUnavailable, match="cannot open the usage ledger"):
        SqliteUsageStore(tmp_path / "file" / "usage.sqlite3")


def test_the_policy_chooses_the_store_and_the_file(tmp_path, monkeypatch):
    base = "version: 1\nauth: open\ndeployments:\n  - {name: d, provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}\n"
    monkeypatch.setenv("LANEWAY_STATE_DIR", str(tmp_path / "state"))
    assert sqlite_path(parse_policy(base).store) == tmp_path / "state" / "usage.sqlite3"
    monkeypatch.delenv("LANEWAY_STATE_DIR")
    assert str(sqlite_path(parse_policy(base).store)) == ".laneway/usage.sqlite3"
    chosen = parse_policy(base + f"store: {{sqlite_path: {tmp_path / 'mine.db'}}}\n")
    store = open_usage_store(chosen)
    assert isinstance(store, SqliteUsageStore) and store.path == tmp_path / "mine.db" and store.path.is_file()
    run(store.close())
    redis = open_usage_store(parse_policy(base + "ledger: {redis_url: 'redis://127.0.0.1:9/0'}\n"))
    assert isinstance(redis, RedisUsageStore)
    run(redis.close())


def test_memory_store_reads_a_range():
    async def main():
        store = MemoryUsageStore()
        await store.add({(HOUR, "a"): 1, (HOUR + 3, "a"): 2})
        await store.add({(HOUR, "a"): 1})
        return await store.read(HOUR, HOUR + 2)

    assert run(main()) == [(HOUR, {"a": 2})]
