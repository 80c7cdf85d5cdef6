"""Budgets shared by every replica: spend counters in the limiter's store (a real Redis here)."""
from __future__ import annotations

import asyncio
import hashlib
import time
from decimal import Decimal

import httpx
import orjson
import pytest
import redis

from proxy.api.errors import http_error
from proxy.call import Outcome
from proxy.config.loader import load_policy
from proxy.errors import Refused
from proxy.pricing.budgets import COUNTER_PREFIX, Budgets
from proxy.store.connect import Target
from proxy.store.memory import MemoryStore
from proxy.store.redis_store import RedisStore
from tests.redis_support import free_port, redis_cluster, redis_server  # noqa: F401  (fixtures)
from tests.support import proxy_from_yaml, simulator
from tests.integration.test_ledger import wait_for

HARD_USD = "0.002"
HARD = 2000                  # micro-USD
IN_PRICE, OUT_PRICE = 10, 30  # USD per million tokens = micro-USD per token
MAX_TOKENS = 5

POLICY = """\
version: 1
auth: keys
keys:
  - {{name: seq, sha256: {seq}, team: {team}-seq}}
  - {{name: burst, sha256: {burst}, team: {team}-burst}}
team_budgets:
  {team}-seq: {{daily_hard_usd: {hard}}}
  {team}-burst: {{daily_hard_usd: {hard}}}
store: {{redis_url: '{url}', timeout_ms: 500}}
ledger: {{flush_interval_s: 0.05}}
deployments:
  - {{name: fast, provider: openai, model: sim-gpu, base_url: {fast}/v1}}
  - {{name: slow, provider: openai, model: sim-gpu, base_url: {slow}/v1}}
prices:
  sim-gpu:
    - {{effective_from: 2020-01-01, input_per_mtok: {inp}, output_per_mtok: {out}, status: announced}}
"""


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def sims():
    with simulator("instant") as fast, simulator("gpu", ttft_ms=1500, tokens_per_s=0) as slow:
        yield fast, slow


def body(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "a short question"}],
                         "max_tokens": MAX_TOKENS})


def reservation(model: str) -> int:
    """What the proxy reserves: the prompt estimated from the body size (4 bytes a token) plus max_tokens."""
    return len(body(model)) // 4 * IN_PRICE + MAX_TOKENS * OUT_PRICE


def spend(stats: dict) -> int:
    """What the simulated provider's own counters say was spent, in micro-USD."""
    return stats["input_tokens"] * IN_PRICE + stats["output_tokens"] * OUT_PRICE


def call(url: str, key: str, model: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", content=body(model), timeout=30,
                      headers={"authorization": f"Bearer {key}", "content-type": "application/json"})


def test_two_replicas_share_one_daily_hard_budget(tmp_path, sims, redis_server):  # noqa: F811
    fast, slow = sims
    for server in sims:
        httpx.post(server.url + "/sim/reset").raise_for_status()
    team = f"t{time.monotonic_ns() % 10**9}"
    seq_key, burst_key = f"lw-seq-{team}", f"lw-burst-{team}"
    text = POLICY.format(seq=sha(seq_key), burst=sha(burst_key), team=team, hard=HARD_USD, url=redis_server.url,
                         fast=fast.url, slow=slow.url, inp=IN_PRICE, out=OUT_PRICE)
    with proxy_from_yaml(tmp_path, text, "a.yaml") as a, proxy_from_yaml(tmp_path, text, "b.yaml") as b:
        urls = [a.url, b.url]
        # Sequential, alternating replicas: each sees the other's spend.
        statuses = [call(urls[i % 2], seq_key, "fast") for i in range(20)]
        admitted = [r for r in statuses if r.status_code == 200]
        refused = [(i % 2, r) for i, r in enumerate(statuses) if r.status_code == 429]
        assert len(admitted) + len(refused) == 20
        spent = spend(httpx.get(fast.url + "/sim/stats").json())
        assert spent <= HARD, f"the two replicas together spent {spent} micro-USD of a {HARD} budget"
        assert len(admitted) >= HARD // reservation("fast"), "each admission commits at most one reservation"
        assert {replica for replica, _ in refused[-2:]} == {0, 1}, "both replicas refuse once it is spent"
        error = refused[-1][1].json()["error"]
        assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
        assert f"{team}-seq" in error["message"]
        # Reconciled: the shared counter holds the actual cost of what was served, to the micro-dollar.
        client = redis.Redis.from_url(redis_server.url)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        counter = f"{COUNTER_PREFIX}team:{team}-seq:{day}"
        wait_for(lambda: int(client.get(counter) or 0) == spent)
        assert 0 < client.pttl(counter) <= 2 * 86_400_000

        # A concurrent burst over both replicas while every admitted request is still in flight:
        # the reservations alone decide, atomically, across replicas.
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as http:
                return await asyncio.gather(*(http.post(
                    urls[i % 2] + "/v1/chat/completions", content=body("slow"),
                    headers={"authorization": f"Bearer {burst_key}", "content-type": "application/json"})
                    for i in range(12)))

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert set(codes) == {200, 429}
        assert 1 <= codes.count(200) <= HARD // reservation("slow")
        assert {i % 2 for i, code in enumerate(codes) if code == 429} == {0, 1}
        assert spend(httpx.get(slow.url + "/sim/stats").json()) <= HARD
        wait_for(lambda: int(client.get(f"{COUNTER_PREFIX}team:{team}-burst:{day}") or 0)
                 == spend(httpx.get(slow.url + "/sim/stats").json()))
        client.close()


async def _exercise(store) -> list:
    """One script of budget-counter calls; the in-memory twin must answer exactly as Redis does."""
    prefix = f"{COUNTER_PREFIX}twin{time.monotonic_ns()}:"
    keys = [prefix + "key", prefix + "team"]
    later = int(time.time() * 1000) + 60_000
    answers = []
    for amount in (300, 300, 500):
        result = await store.reserve_spend(keys, [1000, -1], amount, [later, later])
        answers.append((result.refused, result.spent))
    await store.adjust_spend(keys, -250, [later, later])
    if hasattr(store, "flush"):
        await store.flush()
    answers.append(await store.reserve_spend(keys, [1000, 500], 200, [later, later]))
    await store.seed_spend(keys[0], 9999, later)      # exists: left alone
    await store.seed_spend(prefix + "new", 42, later)  # new: set
    result = await store.reserve_spend([keys[0], prefix + "new"], [-1, -1], 0, [later, later])
    answers.append((result.refused, result.spent))
    gone = int(time.time() * 1000) - 1                 # an expired counter counts from zero
    await store.reserve_spend([prefix + "old"], [-1], 5, [gone])
    result = await store.reserve_spend([prefix + "old"], [-1], 1, [later])
    answers.append((result.refused, result.spent))
    await store.aclose()
    return answers


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_memory_twin_matches_redis_for_budget_counters(request, where):
    server = request.getfixturevalue("redis_server" if where == "standalone" else "redis_cluster")
    in_redis = asyncio.run(_exercise(RedisStore(Target(server.url, cluster=where == "cluster", timeout_s=2.0))))
    in_memory = asyncio.run(_exercise(MemoryStore()))
    assert in_redis == in_memory
    assert in_memory[:3] == [(-1, [0, 0]), (-1, [300, 300]), (0, [600])]  # 600 + 500 > 1000: refused
    assert in_memory[3].refused == 1 and in_memory[3].spent == [350]           # 350 + 200 passes the team's 500
    assert in_memory[4:] == [(-1, [350, 42]), (-1, [0])]


def test_budget_store_outage_follows_on_store_error(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nauth: open\nteam_budgets:\n  ops: {daily_hard_usd: 1}\n"
                    "deployments:\n  - {name: d, provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}\n")
    dead_url = f"redis://127.0.0.1:{free_port()}/0"

    async def reserve(mode: str, *amounts: str) -> Budgets:
        budgets = Budgets(load_policy(path))
        budgets.use_store(RedisStore(Target(dead_url, timeout_s=0.1)), mode)
        for amount in amounts:
            await budgets.reserve(Outcome("r", "chat", "route", "k", "ops"), Decimal(amount))
        return budgets

    # fail_open: this replica counts locally, and still enforces the limit on its own traffic.
    assert asyncio.run(reserve("fail_open", "0.5")).store_errors == 1
    with pytest.raises(Refused) as refused:
        asyncio.run(reserve("fail_open", "0.5", "0.6"))
    assert (http_error(refused.value).status, refused.value.code) == (429, "insufficient_quota")
    with pytest.raises(Refused) as closed:
        asyncio.run(reserve("fail_closed", "0.5"))
    assert (http_error(closed.value).status, closed.value.code) == (503, "budget_store_unavailable")
