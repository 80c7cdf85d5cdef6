"""The usage ledger on a real 3-master Redis Cluster (issue 12 C), through the running proxy.

Before, the ledger built a standalone client whatever `store.topology` said: every write was a
MOVED error, so it recorded nothing, `/admin/cost` answered 503 and `laneway cost report` exited 1.
Now each hour's hash is written in its own transaction (one slot each) and read back from
whichever node holds it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import redis

from proxy.call import Outcome
from proxy.cli import main
from proxy.pricing.ledger import SEP, Ledger
from proxy.store.connect import Target
from proxy.store.usage import KEY_PREFIX, RedisUsageStore, hour_key
from tests.redis_support import redis_cluster, redis_server  # noqa: F401  (fixtures)
from tests.support import proxy_from_yaml, simulator

ADMIN, ALICE = "lw-admin-cluster-ledger", "lw-alice-cluster-ledger"
SERVED = 120
POLICY = """\
version: 1
auth: keys
keys:
  - {{name: alice, sha256: {alice}, team: platform}}
  - {{name: ops, sha256: {admin}, admin: true}}
team_budgets:
  platform: {{daily_hard_usd: 1000}}
store:
  redis_url: {url}
  topology: cluster
  on_store_error: fail_closed
  timeout_ms: 500
  max_connections: 4
deployments:
  - {{name: {dep}, provider: openai, model: sim-codex, base_url: {sim}/v1}}
routes:
  - {{name: codex, candidates: [{dep}]}}
ledger:
  flush_interval_s: 0.05
prices:
  sim-codex:
    - {{effective_from: 2020-01-01, input_per_mtok: 1, output_per_mtok: 2, status: announced}}
"""


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ledger_totals(nodes, deployment: str) -> dict[str, int]:
    """Every ledger hash on every node of the Cluster, summed by token kind for one deployment."""
    totals: dict[str, int] = {}
    for node in nodes:
        client = redis.Redis(port=node.port)
        for name in client.scan_iter(match=KEY_PREFIX + "*"):
            for field, value in client.hgetall(name).items():
                parts = field.decode().split(SEP)
                if parts[0] == deployment:
                    totals[parts[-1]] = totals.get(parts[-1], 0) + int(value)
        client.close()
    return totals


async def serve(url: str, count: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {ALICE}"}, timeout=20,
                                 limits=httpx.Limits(max_connections=count)) as client:
        body = {"model": "codex", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(count)))
    return [r.status_code for r in responses]


def test_cluster_ledger_records_every_served_request_and_reports_it(tmp_path, redis_cluster, capsys):
    dep = f"dep-{uuid.uuid4().hex[:8]}"
    with simulator("instant") as sim:
        text = POLICY.format(alice=sha(ALICE), admin=sha(ADMIN), url=redis_cluster.url, dep=dep, sim=sim.url)
        with proxy_from_yaml(tmp_path, text) as proxy:
            # concurrent requests beyond the pool (4 per node): they wait for a connection, none is refused
            assert asyncio.run(serve(proxy.url, SERVED)) == [200] * SERVED
            admin = httpx.get(proxy.url + "/admin/cost?by=deployment", headers={"authorization": f"Bearer {ADMIN}"})
            assert admin.status_code == 200, admin.text
            line = next(line for line in admin.json()["lines"] if line["group"] == dep)
            assert line["tokens"]["requests"] == SERVED and float(line["usd"]["exact_total"]) > 0
            assert admin.json()["ledger"]["flush_errors"] == 0
        served = httpx.get(sim.url + "/sim/stats").json()
    totals = ledger_totals(redis_cluster.nodes, dep)
    assert totals["requests"] == served["requests"] == SERVED
    assert (totals["input"], totals["output"]) == (served["input_tokens"], served["output_tokens"])

    since = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:00Z")
    code = main(["cost", "report", "--policy", str(tmp_path / "policy.yaml"), "--since", since, "--by", "deployment",
                 "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    line = next(line for line in json.loads(out)["lines"] if line["group"] == dep)
    assert line["tokens"]["requests"] == SERVED and line["tokens"]["output"] == served["output_tokens"]


@pytest.fixture(params=["standalone", "cluster"])
def target(request) -> Target:
    if request.param == "standalone":
        return Target(request.getfixturevalue("redis_server").url, timeout_s=1.0)
    return Target(request.getfixturevalue("redis_cluster").url, cluster=True, timeout_s=1.0)


def test_hours_spread_over_nodes_are_written_once_and_a_failed_hour_alone_is_retried(target):
    """A batch of 30 hours (spread over the Cluster's nodes); one hour's write fails (its key holds a
    string): the others are written, that one stays buffered, and once it can be written every hour
    holds its usage exactly once."""
    base = 50_000 + uuid.uuid4().int % 1000 * 40  # the 1970s: far from any test's "now"
    hours = range(base, base + 30)
    clock = iter(h * 3600 + 1 for h in hours)
    blocked = hour_key(base + 7)

    plain = (redis.RedisCluster if target.cluster else redis.Redis).from_url(target.url)
    plain.set(blocked, "not a hash")

    async def main():
        store = RedisUsageStore(target)
        ledger = Ledger(store, {"dep": "m"}.get, clock=lambda: next(clock))
        for _ in hours:
            ledger.record(Outcome("r", "chat", "route", "k", None, deployment="dep", input_tokens=10, output_tokens=2,
                                  status=200))
        try:
            first = await ledger.flush()  # the client's first call is a write
            stuck = ledger.counters.buffered_rows
            plain.delete(blocked)
            second = await ledger.flush()
            rows = await ledger.read(base, base + 29)
        finally:
            await store.close()
        return first, stuck, second, rows

    first, stuck, second, rows = asyncio.run(main())
    plain.close()
    assert (first, stuck, second) == (False, 1, True)
    assert sorted(row.hour for row in rows) == list(hours)
    assert {(row.tokens.requests, row.tokens.input, row.tokens.output) for row in rows} == {(1, 10, 2)}
