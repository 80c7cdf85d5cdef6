"""The fault matrix: {Redis up, killed, restarted, pool-saturated} x {fail_open, fail_closed} x
{standalone, Cluster} x {HTTP, stream, WebSocket}.

Every cell sends its own key's requests (an rpm limit and a budget, so both the limiter and
budgets ask the store) and checks: no 500, no hang (every call and the cell are bounded), the
policy's status (503 with Retry-After while Redis is gone under fail_closed, per-replica limits
under fail_open, the shared limit exactly otherwise), admitted <= limit, and as many ledger
requests as requests served. One test applies a fault once for its three transports (restarting
a Cluster takes seconds); one Redis, one Cluster and one proxy per (topology, policy) serve the
module.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass

import httpx
import orjson
import pytest
import redis
import websockets
from redis.cluster import RedisCluster as ClusterClient

from proxy.store.failover import RETRY_STORE_S
from proxy.pricing.ledger import SEP
from proxy.store.usage import hour_key
from tests.redis_support import RedisCluster, RedisServer
from tests.support import ServerThread, proxy_from_yaml, simulator

FAULTS = ["up", "killed", "restarted", "pool-saturated"]
TRANSPORTS = ["http", "stream", "websocket"]
LIMIT = 4           # each cell key's rpm
REPLICAS = 2        # fail-open serves LIMIT // REPLICAS per process while Redis is gone
SEQUENCE = LIMIT + 2
BURST = 110         # concurrent calls: past redis-py's default pool of 100 connections
CALL_S = 5.0        # no call may take longer
CELL_S = 15.0       # nor a cell
KEY_SECRET = "lw-fault-{}"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def cell_key(fault: str, transport: str) -> str:
    return f"cell-{fault}-{transport}"


def policy(url: str, topology: str, mode: str, sim_url: str) -> str:
    keys = "\n".join(
        f"  - {{name: {cell_key(f, t)}, sha256: {sha(KEY_SECRET.format(cell_key(f, t)))}, "
        f"limits: {{rpm: {LIMIT}}}, budget: {{daily_hard_usd: 100}}}}"
        for f in FAULTS for t in TRANSPORTS)
    return f"""\
version: 1
auth: keys
store: {{redis_url: '{url}', topology: {topology}, on_store_error: {mode}, replicas: {REPLICAS}, timeout_ms: 100}}
ledger: {{flush_interval_s: 0.05}}
server: {{websocket: {{enabled: true}}}}
keys:
{keys}
deployments:
  - {{name: sim, provider: openai, model: sim-instant, base_url: '{sim_url}/v1'}}
routes:
  - {{name: fast, candidates: [sim]}}
prices:
  sim-instant:
    - {{effective_from: 2020-01-01, input_per_mtok: 1, output_per_mtok: 1, status: announced}}
"""


class Standalone:
    def __init__(self) -> None:
        self.server = RedisServer()

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def client(self):
        return redis.Redis.from_url(self.url)


class Cluster:
    def __init__(self) -> None:
        self.cluster = RedisCluster()

    def start(self) -> None:
        """The first time, create the cluster; later, restart its nodes (slots from nodes.conf)."""
        if self.cluster.nodes[0].process is None and not (self.cluster.nodes[0].dir / "nodes.conf").exists():
            self.cluster.start()
            return
        for node in self.cluster.nodes:
            node.start()
        deadline = time.monotonic() + 15
        while not all("cluster_state:ok" in node.cli("cluster", "info") for node in self.cluster.nodes):
            assert time.monotonic() < deadline, "the restarted cluster did not come back"
            time.sleep(0.05)

    def stop(self) -> None:
        self.cluster.stop()

    @property
    def url(self) -> str:
        return self.cluster.url

    def client(self):
        return ClusterClient.from_url(self.url)


@dataclass
class Setup:
    proxy: ServerThread
    redis: Standalone | Cluster
    topology: str
    mode: str


@pytest.fixture(scope="module")
def sim():
    with simulator("instant") as server:
        yield server


@pytest.fixture(scope="module")
def stores():
    """The module's own servers (cells kill and restart them), started on first use."""
    made: dict[str, Standalone | Cluster] = {}
    yield made
    for store in made.values():
        store.stop()


@pytest.fixture(scope="module", params=[("standalone", "fail_open"), ("standalone", "fail_closed"),
                                        ("cluster", "fail_open"), ("cluster", "fail_closed")],
                ids=lambda p: "-".join(p))
def setup(request, stores, sim, tmp_path_factory):
    topology, mode = request.param
    store = stores.get(topology)
    if store is None:
        store = stores[topology] = Standalone() if topology == "standalone" else Cluster()
        store.start()
    text = policy(store.url, topology, mode, sim.url)
    with proxy_from_yaml(tmp_path_factory.mktemp(f"{topology}-{mode}"), text) as proxy:
        yield Setup(proxy, store, topology, mode)


# --- one call per transport: its status (a WebSocket turn's error event carries one) -------------

def _body(stream: bool) -> bytes:
    return orjson.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": stream})


async def _http(client: httpx.AsyncClient, url: str, key: str, stream: bool) -> int:
    headers = {"authorization": f"Bearer {KEY_SECRET.format(key)}", "content-type": "application/json"}
    async with client.stream("POST", url + "/v1/chat/completions", content=_body(stream), headers=headers) as response:
        body = await response.aread()
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1" and b"store_unavailable" in body
        return response.status_code


async def _turns(url: str, key: str, count: int, parallel: bool) -> list[int]:
    """``count`` Responses turns over one socket: on distinct streams at once, or one after another."""
    statuses: list[int] = []
    headers = {"authorization": f"Bearer {KEY_SECRET.format(key)}"}
    async with websockets.connect("ws" + url[4:] + "/v1/responses", additional_headers=headers) as ws:
        for batch in ([range(count)] if parallel else [[i] for i in range(count)]):
            for i in batch:
                await ws.send(json.dumps({"type": "response.create", "model": "fast", "input": "hi",
                                          "max_output_tokens": 3, "stream_id": f"s{i}"}))
            done = 0
            while done < len(batch):
                event = json.loads(await ws.recv())
                if event["type"] == "response.completed":
                    statuses.append(200)
                elif event["type"] == "error":
                    if event["status"] == 503:
                        assert event["headers"]["retry-after"] == "1"
                    statuses.append(event["status"])
                else:
                    continue
                done += 1
    return statuses


async def _calls(url: str, key: str, transport: str, count: int, parallel: bool) -> list[int]:
    if transport == "websocket":
        return await asyncio.wait_for(_turns(url, key, count, parallel), CELL_S)
    limits = httpx.Limits(max_connections=count + 1, max_keepalive_connections=count + 1)
    async with httpx.AsyncClient(timeout=CALL_S, limits=limits) as client:
        if parallel:
            return list(await asyncio.gather(*(_http(client, url, key, transport == "stream") for _ in range(count))))
        return [await _http(client, url, key, transport == "stream") for _ in range(count)]


def ledger_requests(store: Standalone | Cluster, key: str) -> int:
    client = store.client()
    try:
        hour = int(time.time() // 3600)
        total = 0
        for h in (hour - 1, hour):
            for name, value in client.hgetall(hour_key(h)).items():
                parts = name.decode().split(SEP)
                if parts[2] == key and parts[-1] == "requests":
                    total += int(value)
        return total
    finally:
        client.close()


def wait_for_ledger(store: Standalone | Cluster, key: str, served: int, seconds: float = 2.0) -> int:
    """The ledger's request count for ``key`` once it equals ``served`` (it flushes every 50 ms), or
    what it holds after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (found := ledger_requests(store, key)) != served and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def check(transport: str, statuses: list[int], count: int, fault: str, mode: str) -> None:
    where = f"{transport}: {statuses}"
    if fault == "killed" and mode == "fail_closed":
        assert set(statuses) == {503}, where
    elif fault == "killed":
        assert statuses == [200] * (LIMIT // REPLICAS) + [429] * (count - LIMIT // REPLICAS), where
    else:
        assert sorted(statuses) == [200] * LIMIT + [429] * (count - LIMIT), where  # the shared limit, exactly


@pytest.mark.parametrize("fault", FAULTS)
def test_cell(setup, fault):
    """One fault, one policy, one topology; the three transports, each its own key."""
    state = setup.proxy.app.state
    errors_before = state.limiter.stats.store_errors + state.accounting.budgets.store_errors
    count, parallel = (BURST, True) if fault == "pool-saturated" else (SEQUENCE, False)
    started = time.monotonic()
    if fault == "restarted":
        setup.redis.stop()
        setup.redis.start()
    elif fault == "killed":
        setup.redis.stop()
    try:
        found = {}
        for transport in TRANSPORTS:
            began = time.monotonic()
            found[transport] = asyncio.run(_calls(setup.proxy.url, cell_key(fault, transport), transport, count, parallel))
            assert time.monotonic() - began < CELL_S, f"{transport} took {time.monotonic() - began:.1f}s"
    finally:
        if fault == "killed":
            setup.redis.start()
    if fault == "killed" and setup.mode == "fail_open":
        time.sleep(RETRY_STORE_S)  # then the shared store is tried again: the next cell starts on shared limits
    assert time.monotonic() - started < 3 * CELL_S

    for transport, statuses in found.items():
        assert 500 not in statuses and len(statuses) == count, f"{transport}: {statuses}"
    for transport, statuses in found.items():
        check(transport, statuses, count, fault, setup.mode)
        assert statuses.count(200) <= LIMIT
    if fault in ("up", "pool-saturated"):  # Redis never went away: nothing may have been taken for an outage
        assert state.limiter.stats.store_errors + state.accounting.budgets.store_errors == errors_before
    for transport, statuses in found.items():
        served = statuses.count(200)
        assert wait_for_ledger(setup.redis, cell_key(fault, transport), served) == served, transport
