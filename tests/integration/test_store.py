"""The limiter's store semantics, one suite run against the in-memory store and a real Redis.

Short windows (hundreds of ms) keep the suite fast; every test uses fresh key names.
"""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from proxy.store.base import (CONCURRENCY, COUNTED, PROVIDER, REQUESTS, TOKENS, AmountError, Bucket, ProviderWindowState, StoreError,
                              bucket_amounts)
from proxy.store.connect import Target
from proxy.store.memory import MemoryStore
from proxy.store.redis_store import SETTLE_DELAY_S, RedisStore
from tests.redis_support import RedisServer, redis_cluster, redis_server  # noqa: F401  (fixtures)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_store(request):
    """A factory: each call returns a fresh store of the parametrised kind (closed by the test's loop)."""
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return lambda: RedisStore(Target(server.url, timeout_s=0.5))
    cluster = request.getfixturevalue("redis_cluster")
    return lambda: RedisStore(Target(cluster.url, cluster=True, timeout_s=0.5))


def scope(kind_limit_span: list[tuple[str, int, int]], owner: str | None = None, scope_name: str = "client") -> list[Bucket]:
    owner = owner or uuid.uuid4().hex[:8]
    tag = f"lw:{{t:{owner}}}"
    return [Bucket(f"{tag}:{i}", kind, limit, span, scope_name, owner, f"w{i}") for i, (kind, limit, span) in enumerate(kind_limit_span)]


def test_request_window_admits_exactly_the_limit_then_frees_after_the_window(make_store):
    async def main():
        store = make_store()
        buckets = scope([(REQUESTS, 5, 400)])
        results = [await store.admit(f"r{i}", buckets, [1]) for i in range(8)]
        assert [r.admitted for r in results] == [True] * 5 + [False] * 3
        assert [r.remaining[0] for r in results[:5]] == [4, 3, 2, 1, 0]
        assert 0 < results[5].retry_ms <= 400
        await asyncio.sleep(results[5].retry_ms / 1000 + 0.05)
        assert (await store.admit("late", buckets, [1])).admitted
        await store.aclose()

    run(main())


def test_sliding_window_never_admits_more_than_the_limit_in_any_window(make_store):
    """The fixed-window flaw (2x at a boundary) cannot happen: admissions are logged with their time."""

    async def main():
        store = make_store()
        buckets = scope([(REQUESTS, 4, 300)])
        stamps = []
        deadline = time.monotonic() + 0.9
        i = 0
        while time.monotonic() < deadline:
            if (await store.admit(f"r{i}", buckets, [1])).admitted:
                stamps.append(time.monotonic())
            i += 1
            await asyncio.sleep(0.005)
        for first in stamps:  # any 300 ms span holds at most 4 (5 ms slack for client-vs-server clocks)
            assert sum(1 for s in stamps if first <= s < first + 0.295) <= 4
        assert len(stamps) >= 8  # and it keeps admitting as the window slides
        await store.aclose()

    run(main())


def test_concurrent_admissions_never_over_admit(make_store):
    async def main():
        store = make_store()
        buckets = scope([(REQUESTS, 20, 60_000), (TOKENS, 1000, 60_000)])
        results = await asyncio.gather(*(store.admit(f"r{i}", buckets, bucket_amounts(buckets, 30)) for i in range(60)))
        admitted = sum(r.admitted for r in results)
        assert admitted == 20
        results = await asyncio.gather(*(store.admit(f"s{i}", buckets, bucket_amounts(buckets, 30)) for i in range(10)))
        assert not any(r.admitted for r in results)
        await store.aclose()

    run(main())


def test_tokens_are_reserved_then_reconciled(make_store):
    async def main():
        store = make_store()
        buckets = scope([(TOKENS, 100, 60_000)])
        assert (await store.admit("a", buckets, [60])).remaining == [40]
        assert not (await store.admit("b", buckets, [60])).admitted  # 120 > 100 while a is reserved
        await store.settle("a", buckets, 15)  # a used only 15: 45 refunded
        assert (await store.admit("b", buckets, [60])).remaining == [25]
        await store.settle("b", buckets, 80)  # b used more than reserved: charged the difference
        result = await store.admit("c", buckets, [10])
        assert not result.admitted and result.retry_ms > 0
        await store.settle("a", buckets, None)  # undo a entirely
        assert (await store.admit("c", buckets, [5])).remaining == [15]  # 100 - 80 (b) - 5
        await store.aclose()

    run(main())


def test_a_request_larger_than_the_limit_is_never_admitted(make_store):
    async def main():
        store = make_store()
        buckets = scope([(TOKENS, 100, 60_000)])
        result = await store.admit("huge", buckets, [101])
        assert not result.admitted and result.retry_ms == -1
        await store.aclose()

    run(main())


def test_refusal_reserves_nothing_in_any_bucket(make_store):
    async def main():
        store = make_store()
        client = scope([(REQUESTS, 10, 60_000), (TOKENS, 100, 60_000)])
        deployment = scope([(REQUESTS, 1, 60_000)], scope_name="deployment")
        both = client + deployment
        assert (await store.admit("a", both, bucket_amounts(both, 10))).admitted
        refused = await store.admit("b", both, bucket_amounts(both, 10))
        assert not refused.admitted and refused.refused == 2  # index of the deployment bucket
        result = await store.admit("c", client, bucket_amounts(client, 10))
        assert result.remaining == [8, 80]  # b left no trace in the client buckets
        await store.aclose()

    run(main())


def test_concurrency_leases_release_renew_and_expire(make_store):
    async def main():
        store = make_store()
        buckets = scope([(CONCURRENCY, 2, 400)])
        assert (await store.admit("a", buckets, [1])).admitted
        assert (await store.admit("b", buckets, [1])).admitted
        assert not (await store.admit("c", buckets, [1])).admitted
        await store.settle("a", buckets, 10)  # a finished: its slot is free at once
        assert (await store.admit("c", buckets, [1])).admitted
        await asyncio.sleep(0.25)
        await store.renew("c", buckets)  # c is alive and renews; b's holder died and does not
        await asyncio.sleep(0.25)
        assert (await store.admit("d", buckets, [1])).admitted  # b's lease expired
        assert not (await store.admit("e", buckets, [1])).admitted  # c's renewed lease still holds
        await store.aclose()

    run(main())


def test_provider_word_refuses_until_its_reset_and_is_debited_between_reports(make_store):
    async def main():
        store = make_store()
        owner = uuid.uuid4().hex[:8]
        prov = Bucket(f"lw:{{d:{owner}}}:prov", PROVIDER, 0, 0, "deployment", owner, "provider")
        windows = [ProviderWindowState("requests", "requests", 2, 400), ProviderWindowState("tokens-minute", "tokens", 1000, 400)]
        store.learn(prov, windows, 0)
        assert (await store.admit("a", [prov], [100])).admitted
        assert (await store.admit("b", [prov], [100])).admitted
        refused = await store.admit("c", [prov], [100])  # provider said 2 requests left; both used
        assert not refused.admitted and 0 < refused.retry_ms <= 400
        await asyncio.sleep(0.45)
        assert (await store.admit("d", [prov], [100])).admitted  # its window reset
        store.learn(prov, [ProviderWindowState("tokens-minute", "tokens", 50, 5000)], 0)
        assert not (await store.admit("e", [prov], [100])).admitted  # 50 tokens left < 100
        await store.aclose()

    run(main())


def test_upstream_429_marks_the_deployment_exhausted(make_store):
    async def main():
        store = make_store()
        owner = uuid.uuid4().hex[:8]
        prov = Bucket(f"lw:{{d:{owner}}}:prov", PROVIDER, 0, 0, "deployment", owner, "provider")
        store.learn(prov, [], 300)
        result = await store.admit("a", [prov], [1])
        assert not result.admitted and 200 < result.retry_ms <= 300
        await asyncio.sleep(0.35)
        assert (await store.admit("b", [prov], [1])).admitted
        await store.aclose()

    run(main())


def test_evalsha_reloads_the_script_after_script_flush(redis_server):
    async def main():
        store = RedisStore(Target(redis_server.url, timeout_s=0.5))
        buckets = scope([(REQUESTS, 3, 60_000)])
        assert (await store.admit("a", buckets, [1])).admitted
        redis_server.cli("SCRIPT", "FLUSH")
        assert redis_server.cli("SCRIPT", "EXISTS", store._admit.sha) == "0"
        assert (await store.admit("b", buckets, [1])).remaining == [1]  # NOSCRIPT -> loaded again, same state
        assert redis_server.cli("SCRIPT", "EXISTS", store._admit.sha) == "1"
        await store.aclose()

    run(main())


def test_cluster_scopes_on_different_nodes_undo_a_partial_admission(redis_cluster):
    """Client and deployment buckets hash to different masters; a refusal on one undoes the other."""

    async def main():
        store = RedisStore(Target(redis_cluster.url, cluster=True, timeout_s=0.5))
        await store.client.initialize()
        nodes = set()
        for _ in range(20):  # find two owners whose hash tags live on different masters
            client = scope([(REQUESTS, 5, 60_000)])
            deployment = scope([(REQUESTS, 1, 60_000)], scope_name="deployment")
            nodes = {store.client.get_node_from_key(client[0].key).name, store.client.get_node_from_key(deployment[0].key).name}
            if len(nodes) == 2:
                break
        assert len(nodes) == 2
        both = client + deployment
        assert (await store.admit("a", both, [1, 1])).admitted
        refused = await store.admit("b", both, [1, 1])
        assert not refused.admitted and refused.refused == 1
        assert (await store.admit("c", client, [1])).remaining == [3]  # b's client part was undone
        await store.aclose()

    run(main())


def test_noscript_is_handled_when_queued_settles_ride_with_an_admission(redis_server):
    """Settles wait for the next admission's pipeline; a SCRIPT FLUSH in between loses neither."""

    async def main():
        store = RedisStore(Target(redis_server.url, timeout_s=0.5))
        buckets = scope([(TOKENS, 100, 60_000)])
        assert (await store.admit("a", buckets, [60])).admitted
        await store.settle("a", buckets, 10)  # queued, not yet sent
        redis_server.cli("SCRIPT", "FLUSH")
        result = await store.admit("b", buckets, [80])  # fits only once a's settle has landed
        assert result.admitted and result.remaining == [10]
        await store.aclose()

    run(main())


def test_queued_settles_go_out_on_their_own_without_another_admission(redis_server):
    async def main():
        store = RedisStore(Target(redis_server.url, timeout_s=0.5))
        buckets = scope([(CONCURRENCY, 1, 60_000)])
        assert (await store.admit("a", buckets, [1])).admitted
        await store.settle("a", buckets, 0)
        await asyncio.sleep(0.1)
        assert redis_server.cli("ZCARD", buckets[0].key) == "0"
        await store.aclose()

    run(main())


def reads(server: RedisServer) -> int:
    """Socket reads the server has processed: one per round trip (a pipeline arrives in one)."""
    info = server.cli("INFO", "stats")
    return int(next(line for line in info.splitlines() if line.startswith("total_reads_processed:")).split(":")[1])


def evalsha_calls(server: RedisServer) -> int:
    info = server.cli("INFO", "commandstats")
    line = next((line for line in info.splitlines() if line.startswith("cmdstat_evalsha:")), "cmdstat_evalsha:calls=0,")
    return int(line.split("calls=")[1].split(",")[0])


def provider_bucket_for(owner: str) -> Bucket:
    return Bucket(f"lw:{{d:{owner}}}:prov", PROVIDER, 0, 0, "deployment", owner, "provider")


def test_a_provider_report_costs_no_round_trip_of_its_own():
    """Learning rides in the next admission's pipeline, ahead of it, so that admission already obeys it."""

    async def main(server: RedisServer):
        store = RedisStore(Target(server.url, timeout_s=0.5))
        prov = provider_bucket_for(uuid.uuid4().hex[:8])
        assert (await store.admit("warm", [prov], [1])).admitted  # scripts loaded, connection open
        before = reads(server)
        idle = reads(server) - before  # what reading the counter costs by itself
        before += idle
        store.learn(prov, [ProviderWindowState("requests", "requests", 0, 5000)], 0)
        refused = await store.admit("a", [prov], [1])
        assert reads(server) - before == idle + 1  # report and admission: one round trip
        assert not refused.admitted and 4000 < refused.retry_ms <= 5000
        await store.aclose()

    with RedisServer() as server:
        run(main(server))


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_another_replica_sees_a_report_though_the_replica_that_learnt_it_admits_nothing(kind, request):
    """The queued report goes out on its own within SETTLE_DELAY_S: what one replica learnt reaches the others."""
    server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
    target = Target(server.url, cluster=kind == "cluster", timeout_s=0.5)

    async def main():
        learnt, other = RedisStore(target), RedisStore(target)
        prov = provider_bucket_for(uuid.uuid4().hex[:8])
        assert (await other.admit("first", [prov], [10])).admitted
        learnt.learn(prov, [ProviderWindowState("tokens-minute", "tokens", 5, 5000)], 0)
        await asyncio.sleep(0.1)
        refused = await other.admit("second", [prov], [10])  # the provider has 5 tokens left, it needs 10
        assert not refused.admitted and 4000 < refused.retry_ms <= 5000
        await learnt.aclose()
        await other.aclose()

    run(main())


def test_reports_queued_together_merge_into_one_write():
    """Many responses between two admissions: one write, the newest word per window, the longest 429 block."""

    async def main(server: RedisServer):
        store = RedisStore(Target(server.url, timeout_s=0.5))
        prov = provider_bucket_for(uuid.uuid4().hex[:8])
        assert (await store.admit("warm", [prov], [1])).admitted
        calls = evalsha_calls(server)
        store.learn(prov, [ProviderWindowState("requests", "requests", 9, 60_000), ProviderWindowState("tokens", "tokens", 900, 60_000)], 700)
        store.learn(prov, [ProviderWindowState("requests", "requests", 7, 60_000)], 0)
        await store.flush()
        assert evalsha_calls(server) - calls == 1
        assert server.cli("HGET", prov.key, "requests:r") == "7"  # the newer report's figure
        assert server.cli("HGET", prov.key, "tokens:r") == "900"  # the older report's other window is kept
        refused = await store.admit("a", [prov], [1])
        assert not refused.admitted and 500 < refused.retry_ms <= 700  # the first report's 429 still blocks
        await store.aclose()

    with RedisServer() as server:
        run(main(server))


def test_queued_writes_lost_with_redis_are_counted_and_reported_never_raised():
    async def main(server: RedisServer):
        store = RedisStore(Target(server.url, timeout_s=0.2))
        failures: list[StoreError] = []
        store.background_failed = failures.append
        buckets = scope([(TOKENS, 100, 60_000)])
        prov = provider_bucket_for(uuid.uuid4().hex[:8])
        assert (await store.admit("a", buckets, [60])).admitted
        await store.settle("a", buckets, 10)
        store.learn(prov, [ProviderWindowState("requests", "requests", 3, 5000)], 0)
        server.stop()
        await store.flush()  # the timer's path: Redis is gone
        assert store.dropped_writes == 2 and len(failures) == 1
        store.learn(provider_bucket_for(uuid.uuid4().hex[:8]), [ProviderWindowState("requests", "requests", 2, 5000)], 0)
        with pytest.raises(StoreError):  # the admission's own failure is the caller's to handle
            await store.admit("b", buckets, [1])
        assert store.dropped_writes == 3 and len(failures) == 2  # the report that rode with it is not lost silently
        await store.aclose()

    with RedisServer() as server:
        run(main(server))


def test_a_busy_replica_writes_a_deployments_word_once_a_tick_and_a_429_at_once():
    """Reports after the tick's first are held for the tick (merged), not sent with every admission;
    a report that blocks the deployment is never held."""

    async def main(server: RedisServer):
        store = RedisStore(Target(server.url, timeout_s=0.5))
        prov = provider_bucket_for(uuid.uuid4().hex[:8])
        assert (await store.admit("warm", [prov], [1])).admitted
        calls = evalsha_calls(server)
        store.learn(prov, [ProviderWindowState("requests", "requests", 50, 60_000)], 0)
        assert (await store.admit("a", [prov], [1])).admitted  # the tick's first report rode with it
        assert server.cli("HGET", prov.key, "requests:r") == "49"
        for left in (40, 30, 20):  # three more answers within the tick
            store.learn(prov, [ProviderWindowState("requests", "requests", left, 60_000)], 0)
            assert (await store.admit(f"b{left}", [prov], [1])).admitted
        assert evalsha_calls(server) - calls == 5  # four admissions, one report
        await asyncio.sleep(SETTLE_DELAY_S * 3)
        assert server.cli("HGET", prov.key, "requests:r") == "20"  # the newest word landed with the tick
        assert evalsha_calls(server) - calls == 6
        store.learn(prov, [ProviderWindowState("requests", "requests", 10, 60_000)], 0)  # the new tick's first
        await store.admit("c", [prov], [1])
        store.learn(prov, [ProviderWindowState("requests", "requests", 5, 60_000)], 800)  # a 429 in the same tick
        refused = await store.admit("d", [prov], [1])
        assert not refused.admitted and 600 < refused.retry_ms <= 800
        await store.aclose()

    with RedisServer() as server:
        run(main(server))


def test_a_request_window_beside_a_token_window_counts_its_entries_exactly(make_store):
    """rpm beside tpm (COUNTED): no log of its own, yet the same answers as its own log would give."""

    async def main():
        store = make_store()
        tag = f"lw:{{t:{uuid.uuid4().hex[:8]}}}"
        buckets = [Bucket(f"{tag}:tpm", COUNTED, 3, 400, "client", "o", "rpm"), Bucket(f"{tag}:tpm", TOKENS, 1000, 400, "client", "o", "tpm")]
        admitted = [await store.admit(rid, buckets, [1, 10]) for rid in "abc"]
        assert [r.remaining for r in admitted] == [[2, 990], [1, 980], [0, 970]]
        assert all(0 < reset <= 400 for r in admitted for reset in r.reset_ms)
        refused = await store.admit("d", buckets, [1, 10])
        assert refused.refused == 0 and 0 < refused.retry_ms <= 400
        await store.settle("b", buckets, None)  # undone: neither a request nor tokens any more
        assert (await store.admit("d", buckets, [1, 10])).remaining == [0, 970]
        await store.settle("a", buckets, 0)  # settled with no tokens: still a request in the window
        assert (await store.admit("e", buckets, [1, 10])).refused == 0
        assert (await store.admit("f", buckets, [1, 10])).refused == 0
        await asyncio.sleep(0.45)  # the window passes: its entries, counted and tokens, all leave
        assert (await store.admit("g", buckets, [1, 10])).remaining == [2, 990]
        big = await store.admit("h", buckets, [1, 995])
        assert big.refused == 1 and 0 < big.retry_ms <= 400  # the token window still refuses on its own
        await store.aclose()

    run(main())


def test_a_token_window_outlives_its_entries_with_one_expiry_refresh_a_window():
    """The log and its amounts hash always outlive the newest entry's window, but are not
    re-expired on every admission (that was two calls of every request's admission)."""

    async def main(server: RedisServer):
        store = RedisStore(Target(server.url, timeout_s=0.5))
        buckets = scope([(TOKENS, 1_000_000, 400)])
        log, amounts = buckets[0].key, buckets[0].amounts_key
        assert (await store.admit("a", buckets, [10])).admitted
        ttls = [int(server.cli("PTTL", key)) for key in (log, amounts)]
        assert all(1600 < ttl <= 1800 for ttl in ttls)  # twice the window and a second
        await asyncio.sleep(0.1)
        assert (await store.admit("b", buckets, [10])).admitted
        assert all(int(server.cli("PTTL", key)) < ttl - 50 for key, ttl in zip((log, amounts), ttls))  # not refreshed
        await asyncio.sleep(0.5)  # less than a window plus a second is left: the next admission refreshes both
        assert (await store.admit("c", buckets, [10])).remaining == [999_990]  # a and b left with their window
        assert all(int(server.cli("PTTL", key)) > 1600 for key in (log, amounts))
        await store.aclose()

    with RedisServer() as server:
        run(main(server))


@pytest.fixture(params=["redis", "cluster"])
def shared_store(request):
    """A factory of RedisStores (leases are a shared store's: the in-memory store has no replicas to share with)."""
    server = request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster")
    return lambda: RedisStore(Target(server.url, cluster=request.param == "cluster", timeout_s=0.5))


def test_a_lease_takes_what_each_bucket_has_room_for_and_gives_back_what_it_did_not_use(shared_store):
    async def main():
        store = shared_store()
        owner = uuid.uuid4().hex[:8]
        buckets = scope([(COUNTED, 10, 60_000), (TOKENS, 1000, 60_000), (CONCURRENCY, 3, 30_000), (REQUESTS, 7, 60_000)], owner)
        buckets[0] = Bucket(buckets[1].key, COUNTED, 10, 60_000, "client", owner, "rpm")  # counted in the token log
        grant = await store.lease("L1", buckets, 50, 8, 400, 8, 500)
        # requests: rpd-like window has room for 7; slots: 3; tokens: all 400 asked
        assert (grant.requests, grant.tokens, grant.slots) == (7, 400, 3)
        assert grant.result.remaining == [3, 600, 0, 0]
        refused = await store.lease("L2", buckets, 50, 8, 400, 8, 500)
        assert refused.result.refused == 2 and refused.requests == 0  # no slot left: refused as admit would
        # the lease used 2 requests, 120 tokens, and still runs one of them
        await store.end_lease("L1", buckets, 120, 2, 7, 1, 3)
        await store.flush()
        after = await store.admit("one", buckets, bucket_amounts(buckets, 50))
        assert after.remaining == [10 - 3, 1000 - 170, 3 - 2, 7 - 3]
        with pytest.raises(AmountError):
            await store.lease("L3", buckets, 50, 0, 400, 8, 500)
        await store.aclose()

    run(main())


def test_a_leases_one_entry_counts_all_its_requests_and_slots_until_they_leave(shared_store):
    """A lease is one entry per log however much it holds: the window counts its requests, the
    wait reads them, and they leave with the window (its slots with their lease time) in full."""

    async def main():
        store = shared_store()
        owner = uuid.uuid4().hex[:8]
        tokens = Bucket(f"lw:{{t:{owner}}}:tpm", TOKENS, 10_000, 400, "client", owner, "tpm")
        buckets = [Bucket(tokens.key, COUNTED, 6, 400, "client", owner, "rpm"), tokens,
                   Bucket(f"lw:{{t:{owner}}}:conc", CONCURRENCY, 4, 300, "client", owner, "concurrency")]
        grant = await store.lease("L", buckets, 10, 5, 50, 3, 0)
        assert (grant.requests, grant.slots) == (5, 3)
        assert (await store.admit("a", buckets, bucket_amounts(buckets, 10))).remaining[:1] == [0]
        refused = await store.admit("b", buckets, bucket_amounts(buckets, 10))
        assert refused.refused == 0 and 300 < refused.retry_ms <= 400  # when the lease's entry leaves
        await store.settle("a", buckets, 10)
        await asyncio.sleep(0.45)  # the window and the slots' lease time have passed; nothing was ended
        results = [await store.admit(f"c{i}", buckets, bucket_amounts(buckets, 10)) for i in range(5)]
        assert [r.admitted for r in results] == [True] * 4 + [False]  # 4 slots free again, none held by the lease
        await store.aclose()

    run(main())
