"""proxy/store/affinity.py: which deployment holds a stored response, in memory and in a real Redis
(standalone and Cluster), and a Redis that is gone is a StoreError, never a wrong owner."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from proxy.store import connect
from proxy.store.affinity import KEY_PREFIX, MemoryAffinity, RedisAffinity
from proxy.store.base import StoreError
from tests.redis_support import redis_cluster, redis_server  # noqa: F401  (fixtures)
from tests.support import free_port


def test_memory_keeps_the_newest_owner_forgets_after_the_ttl_and_drops_the_oldest_beyond_capacity(monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr("proxy.store.affinity.time.monotonic", lambda: now[0])
    store = MemoryAffinity(ttl_s=30, capacity=3)

    async def main():
        await store.remember("resp_a", "wafer")
        await store.remember("resp_a", "gpu")      # the newest word wins
        assert await store.owner("resp_a") == "gpu"
        for rid in ("resp_b", "resp_c"):
            await store.remember(rid, "wafer")
        await store.owner("resp_a")
        await store.remember("resp_d", "wafer")    # a fourth: the oldest remembered goes, not the last read
        assert [await store.owner(r) for r in ("resp_a", "resp_b", "resp_c", "resp_d")] == [None, "wafer", "wafer", "wafer"]
        now[0] += 30.5
        assert await store.owner("resp_d") is None and "resp_d" not in store._owners  # expired and dropped
        assert await store.owner("resp_unknown") is None
    asyncio.run(main())


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_redis_is_shared_by_replicas_and_expires_with_its_ttl(request, where) -> None:
    server = request.getfixturevalue("redis_server" if where == "standalone" else "redis_cluster")
    target = connect.Target(server.url, cluster=where == "cluster", timeout_s=1.0)
    rids = [f"resp_{uuid.uuid4().hex}" for _ in range(20)]  # spread over the Cluster's slots

    async def main():
        first, second = connect.client(target), connect.client(target)
        try:
            one, other = RedisAffinity(first, ttl_s=60), RedisAffinity(second, ttl_s=60)
            for index, rid in enumerate(rids):
                await one.remember(rid, f"dep-{index % 3}")
            assert [await other.owner(rid) for rid in rids] == [f"dep-{i % 3}" for i in range(len(rids))]
            assert 55 <= await first.ttl(KEY_PREFIX + rids[0]) <= 60
            assert await other.owner("resp_never_made") is None
            short = RedisAffinity(first, ttl_s=0.2)  # below a second: one second, never "no expiry"
            await short.remember(rids[0], "dep-x")
            assert 0 < await first.ttl(KEY_PREFIX + rids[0]) <= 1
        finally:
            await first.aclose()
            await second.aclose()
    asyncio.run(main())


def test_a_redis_that_is_gone_is_a_store_error_on_lookup_and_on_write() -> None:
    target = connect.Target(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2, retries=0)

    async def main():
        client = connect.client(target)
        store = RedisAffinity(client, ttl_s=60)
        try:
            with pytest.raises(StoreError, match="lookup failed"):
                await store.owner("resp_a")
            with pytest.raises(StoreError, match="write failed"):
                await store.remember("resp_a", "gpu")
        finally:
            await client.aclose()
    asyncio.run(main())
