"""Running out of pooled Redis connections is back-pressure, never an outage (issue 12 D).

300 concurrent budget reservations on a pool of 4 connections per node, under fail_closed,
against a real redis-server and a real 3-master Cluster: every one is admitted and counted.
Before, redis-py's pool (100 connections, failing when empty) turned the 101st concurrent call
into "Too many connections", which budgets took for a dead Redis (503 budget_store_unavailable).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from redis.exceptions import ConnectionError

from proxy.call import Outcome
from proxy.config import parse_policy
from proxy.pricing.budgets import COUNTER_PREFIX, Budgets, Hold, periods
from proxy.store import connect
from proxy.store.connect import Target
from proxy.store.redis_store import RedisStore
from tests.redis_support import redis_cluster, redis_server  # noqa: F401  (fixtures)

CONCURRENT = 300
POLICY = """\
version: 1
auth: open
team_budgets:
  {team}: {{daily_hard_usd: 1000}}
deployments:
  - {{name: d, provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}}
"""


@pytest.fixture(params=["standalone", "cluster"])
def redis(request):
    """(url, is a cluster, its nodes) of the session's standalone server or Cluster."""
    if request.param == "standalone":
        server = request.getfixturevalue("redis_server")
        return server.url, False, [server]
    cluster = request.getfixturevalue("redis_cluster")
    return cluster.url, True, cluster.nodes


def connections_received(nodes) -> list[int]:
    """Connections each node accepted so far, the one asking included."""
    return [int(node.cli("INFO", "stats").split("total_connections_received:")[1].split()[0]) for node in nodes]


def test_concurrent_reservations_beyond_the_pool_all_succeed_under_fail_closed(redis):
    url, cluster, _ = redis
    team = f"t{uuid.uuid4().hex[:8]}"

    async def main():
        budgets = Budgets(parse_policy(POLICY.format(team=team)))
        store = RedisStore(Target(url, cluster=cluster, timeout_s=0.5, pool_size=4))
        budgets.use_store(store, "fail_closed")
        try:
            # scripts loaded first: otherwise the callers queue behind the one loading them
            assert isinstance(await budgets.reserve(Outcome("warm", "responses", "route", "k", team), Decimal("0.001")), Hold)
            verdicts = await asyncio.gather(
                *(budgets.reserve(Outcome(f"r{i}", "responses", "route", "k", team), Decimal("0.001"))
                  for i in range(CONCURRENT)), return_exceptions=True)
            day = periods(datetime.now(timezone.utc))[0]
            spent = await store.client.get(f"{COUNTER_PREFIX}team:{team}:{day}")
        finally:
            await store.aclose()
        return verdicts, int(spent), budgets.store_errors

    verdicts, spent, errors = asyncio.run(main())
    assert [v for v in verdicts if not isinstance(v, Hold)] == [] and errors == 0
    assert spent == (1 + CONCURRENT) * 1000  # micro-USD: every reservation counted, once


def test_callers_wait_for_a_free_connection_and_the_pool_never_grows(redis):
    """200 concurrent commands on a pool of 2: all answered, over at most 2 connections per node."""
    url, cluster, nodes = redis
    before = connections_received(nodes)

    async def main():
        client = connect.client(Target(url, cluster=cluster, timeout_s=1.0, pool_size=2))
        key = f"lw:pool:{{{uuid.uuid4().hex}}}"
        try:
            replies = await asyncio.gather(*(client.incr(key) for _ in range(200)))
            return sorted(replies), int(await client.get(key))
        finally:
            await client.aclose()

    replies, total = asyncio.run(main())
    assert replies == list(range(1, 201)) and total == 200
    opened = [after - then - 1 for after, then in zip(connections_received(nodes), before)]  # - the asking one
    # a Cluster client also opens one connection to learn the slot map
    assert max(opened) <= 2 + cluster, opened


def test_a_pool_that_stays_busy_fails_the_call_after_a_bounded_wait(redis):
    """Past POOL_WAIT_S a caller gives up (Redis is not answering the calls holding the pool): no hang."""
    url, cluster, _ = redis

    async def main():
        client = connect.client(Target(url, cluster=cluster, timeout_s=5.0, pool_size=1))
        key = f"lw:pool:{{{uuid.uuid4().hex}}}"
        try:
            held = asyncio.ensure_future(client.blpop([key], timeout=connect.POOL_WAIT_S + 1))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(ConnectionError):
                await client.get(key)
            waited = time.monotonic() - started
            assert await held is None
            return waited
        finally:
            await client.aclose()

    waited = asyncio.run(main())
    assert connect.POOL_WAIT_S - 0.1 <= waited <= connect.POOL_WAIT_S + 0.5
