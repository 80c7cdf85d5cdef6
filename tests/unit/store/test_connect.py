"""proxy/store/connect.py: the one module that builds Redis clients, what each component gets, redaction."""
from __future__ import annotations

import ast
import gc
from pathlib import Path

from redis.asyncio import Redis

from proxy.config import parse_policy
from proxy.store import connect
from proxy.store.connect import Target

PROXY = Path(__file__).resolve().parents[3] / "proxy"
# what builds a client, a pool or a socket to Redis
BUILDERS = {"Redis", "RedisCluster", "from_url", "from_pool", "ConnectionPool", "BlockingConnectionPool", "ClusterNode"}


def policy(store: str = "", ledger: str = ""):
    return parse_policy("version: 1\nauth: open\n"
                        "deployments:\n  - {name: d, provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}\n"
                        + store + ledger)


def sources() -> dict[Path, ast.Module]:
    """Every module but connect.py, parsed with the collector off: a finalizer run mid-parse (a task an
    earlier test left behind, destroyed and logged) trips CPython 3.11's "AST constructor recursion
    depth mismatch"."""
    gc.collect()
    gc.disable()
    try:
        return {path: ast.parse(path.read_text(), str(path)) for path in PROXY.rglob("*.py")
                if not (path.name == "connect.py" and path.parent.name == "store")}
    finally:
        gc.enable()


def test_only_connect_builds_redis_clients():
    """No module of the proxy but connect.py calls a Redis client, pool or URL constructor."""
    found = []
    for path, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in BUILDERS:
                    found.append(f"{path.relative_to(PROXY.parent)}:{node.lineno} {name}(")
    assert found == []


def test_every_component_follows_the_store_topology():
    """The ledger on a Cluster gets a Cluster client (it used to get a standalone one: MOVED, nothing recorded)."""
    p = policy("store: {redis_url: 'redis://127.0.0.1:7000', topology: cluster, timeout_ms: 80, max_connections: 12}\n")
    limits, ledger, sharing = connect.limits_target(p.store), connect.ledger_target(p), connect.sharing_target(p.store)
    assert (limits.cluster, limits.timeout_s, limits.pool_size) == (True, 0.08, 12)
    assert ledger.cluster and ledger.timeout_s == connect.LEDGER_TIMEOUT_S and sharing.cluster
    assert (limits.retries, ledger.retries) == (1, 0)  # a retried ledger write whose reply was lost would count twice
    assert {name: t.cluster for name, t in connect.probe_targets(p).items()} == {"limits": True, "ledger": True}


def test_a_separate_ledger_redis_and_none_at_all():
    p = policy(ledger="ledger: {redis_url: 'redis://ledger:6379/2'}\n")
    assert connect.limits_target(p.store) is None and connect.sharing_target(p.store) is None
    assert connect.ledger_target(p).url == "redis://ledger:6379/2"
    assert list(connect.probe_targets(p)) == ["ledger"]
    assert connect.ledger_target(policy()) is None and connect.probe_targets(policy()) == {}


def test_passwords_are_never_shown():
    target = Target("redis://lw:s3cret@cache:6379/0", cluster=True)
    assert connect.redact(target.url) == "redis://***@cache:6379/0"
    assert str(target) == "redis://***@cache:6379/0 (cluster)"
    assert "s3cret" not in repr(target) and "s3cret" not in str(target)
    assert connect.redact("unix:///run/redis.sock?db=2") == "unix:///run/redis.sock?db=2"
    secret = {"REDIS_URL": "redis://lw:s3cret@cache:6379/0"}
    text = "version: 1\nauth: open\nstore: {redis_url: '${REDIS_URL}'}\nledger: {redis_url: '${REDIS_URL}'}\n"
    configured = parse_policy(text + "deployments:\n  - {name: d, provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}\n",
                              env=secret)
    assert configured.ledger.redis_url == secret["REDIS_URL"] and "s3cret" not in repr(configured)


def test_standalone_pools_wait_and_lean_connections_are_for_plain_standalone_only():
    client = connect.client(Target("redis://127.0.0.1:9/0", timeout_s=0.2, pool_size=5))
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert (pool.max_connections, pool.timeout) == (5, connect.POOL_WAIT_S)
    assert pool.connection_kwargs["socket_timeout"] == 0.2
    assert connect.lean(Target("redis://127.0.0.1:9/0", cluster=True)) is None
    assert connect.lean(Target("rediss://cache:6380/0")) is None
    assert connect.lean(Target("unix:///run/redis.sock?db=2")) is not None
