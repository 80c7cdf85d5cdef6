"""Quota leases against a real Redis (standalone and a 3-master Cluster): several limiters stand
for several replicas; whatever they lease, admissions never pass a limit, the unused part goes
back, and a replica that dies holds nothing for longer than its windows and slot leases say."""
from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import pytest

from proxy.config.loader import parse_policy
from proxy.errors import ClientLimited, StoreUnavailable
from proxy.limits.limiter import DeploymentLimited, Limiter
from tests.redis_support import RedisServer, redis_cluster, redis_server  # noqa: F401  (fixtures)

POLICY = """\
version: 1
auth: keys
store: {{redis_url: '{url}', topology: {topology}, timeout_ms: 200, on_store_error: {mode}, lease_s: {lease_s},
         leases: {{requests: {requests}, duration_ms: {duration_ms}, share: {share}}}}}
keys:
  - {{name: {key}, sha256: {sha}, limits: {{{client}}}}}
deployments:
  - {{name: {dep}, provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1'{deployment}}}
  - {{name: {dep}-free, provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}}
"""


@pytest.fixture(params=["standalone", "cluster"])
def redis_url(request) -> tuple[str, str]:
    server = request.getfixturevalue("redis_server" if request.param == "standalone" else "redis_cluster")
    return server.url, request.param


def policy(url: tuple[str, str], client: str = "rpm: 100000", deployment: str = "", *, mode: str = "fail_closed",
           requests: int = 256, duration_ms: int = 1000, share: float = 1.0, lease_s: float = 30):
    """A fresh key and deployment (their buckets start empty), ``deployment`` its limits."""
    key, dep = f"k{uuid.uuid4().hex[:8]}", f"d{uuid.uuid4().hex[:8]}"
    text = POLICY.format(url=url[0], topology=url[1], mode=mode, lease_s=lease_s, requests=requests,
                         duration_ms=duration_ms, share=share, key=key, sha=hashlib.sha256(key.encode()).hexdigest(),
                         client=client, dep=dep, deployment=f", limits: {{{deployment}}}" if deployment else "")
    return parse_policy(text), key, dep


async def burst(limiter: Limiter, key: str, dep: str, seconds: float, tasks: int = 16, tokens: int = 10,
                used: int = 10, hold_s: float = 0.0, in_flight: list[int] | None = None) -> int:
    """Admit as fast as possible from ``tasks`` tasks for ``seconds``; how many were admitted."""
    admitted = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal admitted
        while time.monotonic() < deadline:
            ticket = limiter.borrow(key, tokens, 1)
            try:
                await ticket.admit(dep)
            except (ClientLimited, DeploymentLimited):
                limiter.give_back(ticket, 0)
                await asyncio.sleep(0.002)
                continue
            admitted += 1
            if in_flight is not None:
                in_flight[0] += 1
                in_flight[1] = max(in_flight[1], in_flight[0])
            await asyncio.sleep(hold_s)
            if in_flight is not None:
                in_flight[0] -= 1
            limiter.give_back(ticket, used)

    await asyncio.gather(*(one() for _ in range(tasks)))
    return admitted


def replicas(p, n: int) -> list[Limiter]:
    return [Limiter.from_policy(p) for _ in range(n)]


def test_replicas_leasing_in_a_burst_admit_exactly_the_client_limit(redis_url):
    p, key, dep = policy(redis_url, client="rpm: 120", share=0.1)

    async def main():
        limiters = replicas(p, 3)
        counts = await asyncio.gather(*(burst(limiter, key, dep, 1.6) for limiter in limiters))
        borrowed = sum(limiter.leases.borrowed for limiter in limiters)
        counted = sum(limiter.leases.admitted for limiter in limiters)
        for limiter in limiters:
            await limiter.aclose()
        return sum(counts), borrowed, counted

    admitted, borrowed, counted = asyncio.run(main())
    assert admitted == 120  # never more; and leases that ended gave their unused part back in time
    assert borrowed < admitted == counted  # leases served several requests each, every one counted


def test_token_windows_hold_across_replicas_and_settle_to_real_usage(redis_url):
    """tpm 2000, each request reserves 200 and uses 20: reservations come back to the lease as
    requests end, so far more than 10 are admitted, and never more than the real usage allows."""
    p, key, dep = policy(redis_url, client="tpm: 2000", share=0.5)

    async def main():
        limiters = replicas(p, 2)
        counts = await asyncio.gather(*(burst(limiter, key, dep, 1.3, tokens=200, used=20) for limiter in limiters))
        for limiter in limiters:
            await limiter.aclose()
        return sum(counts)

    admitted = asyncio.run(main())
    assert 10 < admitted <= 2000 // 20


def test_concurrency_slots_leased_as_blocks_never_exceed_the_limit(redis_url):
    p, key, dep = policy(redis_url, deployment="concurrency: 6", share=1.0)

    async def main():
        limiters = replicas(p, 3)
        in_flight = [0, 0]  # now, most at once, across every replica
        counts = await asyncio.gather(*(burst(limiter, key, dep, 1.0, tasks=8, hold_s=0.02, in_flight=in_flight)
                                        for limiter in limiters))
        for limiter in limiters:
            await limiter.aclose()
        return sum(counts), in_flight[1]

    admitted, most = asyncio.run(main())
    assert most <= 6
    assert admitted > 6 * 10  # slots are handed out again as requests end


def test_an_idle_lease_gives_its_unused_part_back_to_other_replicas(redis_url):
    p, key, dep = policy(redis_url, client="rpm: 40", duration_ms=300)

    async def main():
        a, b = replicas(p, 2)
        taken = await burst(a, key, dep, 0.1, tasks=4)  # a's leases grow with its demand
        assert a.leases.borrowed >= 2
        # a stops; once its leases' duration is over what it did not use is b's
        await asyncio.sleep(0.6)
        more = await burst(b, key, dep, 0.8, tasks=4)
        await a.aclose()
        await b.aclose()
        return taken, more

    taken, more = asyncio.run(main())
    assert taken + more == 40


def test_a_deployment_refusal_hands_the_client_lease_its_request_back(redis_url):
    p, key, dep = policy(redis_url, client="rpm: 10", deployment="rpm: 3")

    async def main():
        limiter = Limiter.from_policy(p)
        limited = 0
        for _ in range(6):
            ticket = limiter.borrow(key, 5, 1)
            try:
                await ticket.admit(dep)
                limiter.give_back(ticket, 5)
            except DeploymentLimited:
                limited += 1
                await ticket.admit(f"{dep}-free")  # the next candidate, with the client's quota intact
                limiter.give_back(ticket, 5)
        ticket = limiter.borrow(key, 5, 1)
        for _ in range(4):
            await ticket.admit(f"{dep}-free")
            limiter.give_back(ticket, 5)
            ticket = limiter.borrow(key, 5, 1)
        with pytest.raises(ClientLimited) as refused:
            await ticket.admit(f"{dep}-free")
        await limiter.aclose()
        return limited, refused.value

    limited, refused = asyncio.run(main())
    assert limited == 3
    assert refused.retry_ms > 0


def test_a_replica_that_dies_holding_leases_frees_its_slots_within_lease_s(redis_url):
    p, key, dep = policy(redis_url, client="concurrency: 4", lease_s=0.3)

    async def hold():
        limiter = Limiter.from_policy(p)
        for _ in range(4):
            await limiter.borrow(key, 5, 1).admit(dep)
        # the process dies here: no give_back, no aclose; asyncio.run cancels its timers and renewals

    asyncio.run(hold())

    async def later():
        limiter = Limiter.from_policy(p)
        with pytest.raises(ClientLimited):
            await limiter.borrow(key, 5, 1).admit(dep)
        await asyncio.sleep(1.0)  # the slots' lease time, from their last renewal, with room for a loaded machine
        await limiter.borrow(key, 5, 1).admit(dep)
        await limiter.aclose()

    asyncio.run(later())


def test_a_reload_ends_the_leases_of_the_old_limits(redis_url):
    p, key, dep = policy(redis_url, client="rpm: 20")  # leases last a second unless ended

    async def main():
        a, b = replicas(p, 2)
        taken = await burst(a, key, dep, 0.1, tasks=2)
        a.load(p)  # the same limits here: what matters is that a's leases went back at once
        await asyncio.sleep(0.05)
        more = await burst(b, key, dep, 0.2, tasks=2)
        await a.aclose()
        await b.aclose()
        return taken, more

    taken, more = asyncio.run(main())
    assert taken + more == 20


def test_redis_gone_fails_closed_and_fails_open_with_leases():
    server = RedisServer().start()
    try:
        closed, key, dep = policy((server.url, "standalone"), client="rpm: 100", mode="fail_closed")
        opened, key2, _ = policy((server.url, "standalone"), client="rpm: 100", mode="fail_open")

        async def main():
            a, b = Limiter.from_policy(closed), Limiter.from_policy(opened)
            server.stop()
            with pytest.raises(StoreUnavailable):
                await a.borrow(key, 5, 1).admit(dep)
            await b.borrow(key2, 5, 1).admit(dep)  # per-replica limits, from the local store
            assert b.stats.local_admissions == 1
            await a.aclose()
            await b.aclose()

        asyncio.run(main())
    finally:
        server.stop()


def test_a_leases_end_writes_land_in_order_even_when_the_store_answers_them_out_of_order():
    """On a Cluster two calls may overtake each other: the end that still counts a running request
    must never land after the final one (the window would keep its reservation until it expires)."""
    from proxy.config.schema import LeaseSettings
    from proxy.limits.leases import Leases
    from proxy.store.base import TOKENS, AdmitResult, Bucket, LeaseGrant

    class OvertakingStore:
        def __init__(self) -> None:
            self.landed: list[int] = []
            self.calls = 0

        async def lease(self, rid, buckets, tokens, requests, lease_tokens, slots, ahead_ms):
            return LeaseGrant(AdmitResult(-1, 0, [1000], [0]), 4, 400, 4)

        async def end_lease(self, rid, buckets, tokens, kept, granted, held, slots):
            self.calls += 1
            await asyncio.sleep(0.05 if self.calls == 1 else 0)  # the first write is the slow one
            self.landed.append(tokens)

        async def renew(self, rid, buckets):
            pass

    async def main():
        store = OvertakingStore()
        tasks = []
        leases = Leases(LeaseSettings(), store, lambda coro: tasks.append(asyncio.ensure_future(coro)) or tasks[-1])
        buckets = (Bucket("lw:{c:x}:tpm", TOKENS, 1000, 60_000, "client", "x", "tpm"),)
        lease = await leases.take(buckets, 100)
        leases.retire_all()          # ends while its request runs: counts used + reserved (100)
        leases.finish(lease, 100, 30)  # the request ends: the final end counts what it used (30)
        await asyncio.gather(*tasks)
        return store.landed

    assert asyncio.run(main()) == [100, 30]
