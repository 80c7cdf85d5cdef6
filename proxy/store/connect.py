"""The one door to Redis: every client the proxy opens to a Redis is built here.

A ``Target`` says where a Redis is (URL, standalone or Cluster), how long one call may take
and how many connections a worker keeps to each of its nodes; ``limits_target``,
``ledger_target``, ``sharing_target`` and ``probe_targets`` derive each component's from the
policy. ``client`` builds redis-py's client for a target, ``lean`` the request path's
pipelined connection (proxy/store/resp.py).

Running out of pooled connections is back-pressure, not an outage: a call that finds every
connection busy waits for one (at most ``POOL_WAIT_S``) instead of failing, so a burst of
concurrent calls never reaches a policy's ``on_store_error``. Only a Redis that does not
answer (connect refused, timeouts, a pool still busy after the wait) fails a call.
URLs are shown only through ``redact``: they may carry a password.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisClusterException

from proxy.config.schema import Policy, StoreSettings
from proxy.store.resp import Command, LeanRedis

POOL_WAIT_S = 1.0        # longest a call waits for a free connection before it counts as Redis not answering
LEDGER_TIMEOUT_S = 1.0   # the ledger writes and reads in the background: a slower Redis is no failure
LEDGER_POOL = 4          # one flush at a time, plus the occasional report
SHARING_TIMEOUT_S = 0.5
PROBE_TIMEOUT_S = 0.5


@dataclass(frozen=True, slots=True)
class Target:
    """One Redis as one component uses it; ``pool_size`` connections per node per worker."""

    url: str = field(repr=False)  # may hold a password: show ``redact(url)``
    cluster: bool = False
    timeout_s: float = 0.05       # connect and read, per call
    pool_size: int = 64
    retries: int = 1              # immediate retries on a dropped connection or a timeout

    def __str__(self) -> str:
        return redact(self.url) + (" (cluster)" if self.cluster else "")


def limits_target(settings: StoreSettings) -> Target | None:
    """The rate limiter's and the budgets' Redis: on the request path, bounded by ``timeout_ms``."""
    if not settings.redis_url:
        return None
    return Target(settings.redis_url, settings.topology == "cluster", settings.timeout_ms / 1000, settings.max_connections)


def ledger_target(policy: Policy, timeout_s: float = LEDGER_TIMEOUT_S) -> Target | None:
    """``ledger.redis_url``, else the store's ``redis_url``; either has the store's topology."""
    url = policy.ledger.redis_url or policy.store.redis_url
    if not url:
        return None
    # no retry: a retried write whose reply was lost would count twice; the ledger retries from its buffer
    return Target(url, policy.store.topology == "cluster", timeout_s, LEDGER_POOL, retries=0)


def sharing_target(settings: StoreSettings) -> Target | None:
    """Latency statistics shared between replicas: one pipelined call every few seconds."""
    if not settings.redis_url:
        return None
    return Target(settings.redis_url, settings.topology == "cluster", SHARING_TIMEOUT_S, 1)


def probe_targets(policy: Policy) -> dict[str, Target]:
    """component -> target for every Redis the policy uses, as the latency probe PINGs them."""
    targets = {}
    for component, target in (("limits", limits_target(policy.store)), ("ledger", ledger_target(policy))):
        if target is not None:
            targets[component] = Target(target.url, target.cluster, PROBE_TIMEOUT_S, 1, retries=0)
    return targets


def client(target: Target) -> Redis | RedisCluster:
    """redis-py's asyncio client, with the target's timeouts and retries and a pool that waits."""
    options = dict(socket_timeout=target.timeout_s, socket_connect_timeout=target.timeout_s,
                   retry=Retry(NoBackoff(), target.retries))
    if target.cluster:
        return _WaitingCluster.from_url(target.url, pool_size=target.pool_size, **options)
    pool = BlockingConnectionPool.from_url(target.url, max_connections=target.pool_size, timeout=POOL_WAIT_S, **options)
    return Redis.from_pool(pool)


def lean(target: Target) -> LeanRedis | None:
    """The lean connection for a standalone redis:// or unix:// target; None for Cluster and TLS."""
    parts = urlsplit(target.url)
    if target.cluster or parts.scheme not in ("redis", "unix"):
        return None
    setup: list[Command] = []
    if parts.password is not None:
        password = unquote(parts.password)
        setup.append((b"AUTH", unquote(parts.username), password) if parts.username else (b"AUTH", password))
    if parts.scheme == "redis":
        db = parts.path.lstrip("/")
        host, port, path = parts.hostname or "127.0.0.1", parts.port or 6379, None
    else:
        db = (parse_qs(parts.query).get("db") or [""])[0]
        host, port, path = None, 0, parts.path
    if db and db != "0":
        setup.append((b"SELECT", db))
    return LeanRedis(host, port, path, setup, target.timeout_s)


def redact(url: str) -> str:
    """The URL without its credentials."""
    return re.sub(r"//[^@/]*@", "//***@", url)


class _WaitingCluster(RedisCluster):
    """RedisCluster whose callers wait for a connection instead of failing with MaxConnectionsError.

    A call holds a permit while it runs, and a permit covers at most one connection per node,
    so no node's pool can run dry. Commands and pipelines draw on separate permits (each node
    keeps ``2 * pool_size`` connections) because a pipeline re-sends redirected commands as
    plain commands while it holds its own permit: the two kinds never wait on each other.
    """

    def __init__(self, *args, pool_size: int, **kwargs) -> None:
        super().__init__(*args, max_connections=2 * pool_size, **kwargs)
        self._commands = asyncio.Semaphore(pool_size)
        self._pipelines = asyncio.Semaphore(pool_size)

    async def execute_command(self, *args, **kwargs):
        await _acquire(self._commands)
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._commands.release()

    def pipeline(self, transaction=None, shard_hint=None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _WaitingPipeline(self, transaction)


class _WaitingPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list:
        permits = self.cluster_client._pipelines
        await _acquire(permits)
        try:
            return await super().execute(raise_on_error, allow_redirections)
        finally:
            permits.release()


async def _acquire(permits: asyncio.Semaphore) -> None:
    """A permit now if one is free, else within POOL_WAIT_S (else redis-py's ConnectionError)."""
    if not permits.locked():
        await permits.acquire()
        return
    try:
        async with asyncio.timeout(POOL_WAIT_S):
            await permits.acquire()
    except TimeoutError:
        raise ConnectionError(f"no Redis connection came free within {POOL_WAIT_S:g} s") from None
