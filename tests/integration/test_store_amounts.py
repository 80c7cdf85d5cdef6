"""Bad amounts (negative, zero, fractional, bool, past 2**53) are the caller's error in both stores:
refused before anything is reserved, never taken for a store outage, never a negative reservation."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid

import pytest
import redis

from proxy.config.loader import parse_policy
from proxy.limits.limiter import Limiter
from proxy.store import scripts
from proxy.store.base import MAX_AMOUNT, REQUESTS, TOKENS, AmountError, StoreError
from proxy.store.connect import Target
from proxy.store.memory import MemoryStore
from proxy.store.redis_store import RedisStore
from tests.integration.test_store import make_store, run, scope  # noqa: F401  (fixture)
from tests.redis_support import redis_cluster, redis_server  # noqa: F401  (fixtures)

BAD = [0, -1, -10**12, -2**63, 2**63, MAX_AMOUNT + 1, True, 1.5]


def test_a_bad_amount_is_refused_and_reserves_nothing(make_store):  # noqa: F811
    async def main():
        store = make_store()
        buckets = scope([(REQUESTS, 10, 60_000), (TOKENS, 1000, 60_000)])
        for amount in BAD:
            with pytest.raises(AmountError):
                await store.admit(f"bad-{amount}", buckets, [1, amount])
        assert (await store.admit("good", buckets, [1, MAX_AMOUNT])).retry_ms == -1  # in range: simply too large
        assert (await store.admit("good", buckets, [1, 100])).remaining == [9, 900]
        await store.aclose()

    run(main())


def test_negative_reservations_cannot_make_room_for_more(make_store):  # noqa: F811
    """Before: each negative reservation lowered the window's total, and the normal requests beside
    them got far more than the limit (2.8x in the filed report)."""

    async def main():
        store = make_store()
        buckets = scope([(TOKENS, 3000, 60_000)])
        admitted = 0
        for i in range(60):
            with contextlib.suppress(AmountError):
                await store.admit(f"neg-{i}", buckets, [-10**12])
            admitted += (await store.admit(f"ok-{i}", buckets, [100])).admitted
        await store.aclose()
        return admitted

    assert run(main()) == 30


def test_a_bad_settlement_never_refunds_the_reservation(make_store):  # noqa: F811
    async def main():
        store = make_store()
        buckets = scope([(TOKENS, 1000, 60_000)])
        await store.admit("held", buckets, [400])
        for used in (-10**12, -1, True, 0.5):
            with contextlib.suppress(AmountError):  # the in-memory store raises; Redis refuses the queued settle
                await store.settle("held", buckets, used)
        remaining = (await store.admit("next", buckets, [100])).remaining
        await store.aclose()
        return remaining

    assert run(main()) == [500]  # 1000 - 400 (still held as reserved) - 100


def test_memory_budget_counters_refuse_bad_amounts_like_redis():
    key = "laneway:budget:{lw-budget}:key:amounts-memory:day"

    async def main():
        store = MemoryStore()
        for amount in (-1, -2**63, 2**63, True, 0.5):
            with pytest.raises(AmountError):
                await store.reserve_spend([key], [1000], amount, [4_000_000_000_000])
            with pytest.raises(AmountError):
                await store.seed_spend(key, amount, 4_000_000_000_000)
        for delta in (-2**63, 2**63, False, 0.5):
            with pytest.raises(AmountError):
                await store.adjust_spend([key], delta, [4_000_000_000_000])
        return await store.reserve_spend([key], [1000], 10, [4_000_000_000_000])

    result = run(main())
    assert (result.refused, result.spent) == (-1, [0])  # nothing was counted before


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_redis_budget_counters_refuse_bad_amounts(request, where):
    server = request.getfixturevalue("redis_server" if where == "standalone" else "redis_cluster")
    key = f"laneway:budget:{{lw-budget}}:key:amounts-{uuid.uuid4().hex[:8]}:day"

    async def main():
        store = RedisStore(Target(server.url, cluster=where == "cluster", timeout_s=2.0))
        try:
            for amount in (-1, -2**63, 2**63, True, 0.5):
                with pytest.raises(AmountError):
                    await store.reserve_spend([key], [1000], amount, [4_000_000_000_000])
            return await store.reserve_spend([key], [1000], 10, [4_000_000_000_000])
        finally:
            await store.aclose()

    result = run(main())
    assert (result.refused, result.spent) == (-1, [0])  # nothing was counted before


ARGS = {  # script -> (number of keys, a valid call's ARGV with {amount} where the amount goes)
    "ADMIT": (2, ["rid", "t:1000:60000", "{amount}"]),
    "SETTLE": (2, ["rid", "t:1000:60000", "{amount}"]),
    "SPEND_RESERVE": (1, ["{amount}", "1000", "4000000000000"]),
    "SPEND_ADJUST": (1, ["{amount}", "4000000000000"]),
}


@pytest.mark.parametrize("script", sorted(ARGS))
@pytest.mark.parametrize("amount", ["-1", "1.5", "1e3", "abc", "", "-9223372036854775808", "9007199254740992"])
def test_each_script_refuses_a_bad_amount_before_writing(redis_server, script, amount):  # noqa: F811
    client = redis.Redis.from_url(redis_server.url)
    numkeys, argv = ARGS[script]
    keys = [f"lw:{{amounts-{uuid.uuid4().hex[:8]}}}:{i}" for i in range(numkeys)]
    if script == "SPEND_ADJUST" and amount == "-1":
        amount = "-9007199254740992"  # a negative adjustment is a refund: only its size is bounded
    with pytest.raises(redis.ResponseError, match=scripts.AMOUNT_ERROR):
        client.eval(getattr(scripts, script), numkeys, *keys, *[a.format(amount=amount) for a in argv])
    assert client.exists(*keys) == 0
    client.close()


POLICY = """\
version: 1
auth: keys
store: {{redis_url: '{url}', on_store_error: fail_closed}}
keys:
  - {{name: {key}, sha256: {sha}, limits: {{tpm: 3000}}}}
deployments:
  - {{name: d-{key}, provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}}
"""


def test_the_limiter_takes_a_bad_amount_for_the_callers_error_not_an_outage(redis_server, caplog):  # noqa: F811
    """Before: ``max_tokens: -2**63`` failed the script's HINCRBY, was logged as "store unreachable"
    and answered 503 under fail_closed."""
    caplog.set_level(logging.WARNING, logger="laneway.limits")
    key = f"amounts-{uuid.uuid4().hex[:8]}"
    limiter = Limiter.from_policy(parse_policy(POLICY.format(url=redis_server.url, key=key,
                                                             sha=hashlib.sha256(key.encode()).hexdigest())))

    async def main():
        try:
            with pytest.raises(AmountError):
                await limiter.borrow(key, 10, -2**63).admit(f"d-{key}")
            await limiter.borrow(key, 10, 20).admit(f"d-{key}")  # the next request is admitted as usual
        finally:
            await limiter.aclose()

    asyncio.run(main())
    assert limiter.stats.store_errors == 0
    assert not any("unreachable" in r.getMessage() for r in caplog.records)
    assert not issubclass(AmountError, StoreError)
