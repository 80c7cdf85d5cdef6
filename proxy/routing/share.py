"""Share latency statistics between replicas through Redis, in the background only.

Every ``interval_s`` each replica writes a summary of what it measured (per deployment and
prompt-size bucket: EWMA and sample count of TTFT and decode rate, error rate) into one
Redis hash, field = its replica id, and reads the other replicas' summaries back. Those
become the ``peer`` figures each DeploymentStats blends with its own (weighted by sample
counts), so a new or idle replica routes on the fleet's measurements instead of priors.
Nothing here runs on the request path; when Redis is unreachable the replica keeps its
own statistics and says so once in the log.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import orjson
from redis.exceptions import RedisError

from proxy.routing.stats import LatencyStats
from proxy.store import connect

log = logging.getLogger("laneway.routing")
KEY = "laneway:latency"


class StatsSharing:
    def __init__(self, stats: LatencyStats, target: connect.Target, *, interval_s: float = 2.0, stale_s: float = 30.0,
                 key: str = KEY) -> None:
        self.stats = stats
        self.key = key
        self.interval_s = interval_s
        self.stale_s = stale_s
        self.replica = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(3).hex()}"
        self.client = connect.client(target)  # one key: one slot, so a pipeline works on both topologies
        self.peers = 0        # replicas merged on the last sync
        self.failures = 0     # syncs that could not reach Redis
        self.merged_at: float | None = None      # wall time of the last merge of peers' figures
        self.oldest_peer_at: float | None = None  # when the oldest figures merged then were published
        self._task: asyncio.Task | None = None
        self._failing = False

    async def sync(self) -> None:
        """Publish ours and merge theirs; one pipelined round trip."""
        now = time.time()
        mine = orjson.dumps({"at": now, "deployments": self.stats.summary()})
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(self.key, self.replica, mine)
                pipe.hgetall(self.key)
                _, everyone = await pipe.execute()
        except (RedisError, OSError) as exc:
            self.failures += 1
            if not self._failing:
                log.warning("latency statistics not shared (Redis: %s); this replica uses its own until it is back", exc)
            self._failing = True
            return
        if self._failing:
            log.info("latency statistics shared through Redis again")
        self._failing = False
        peers, stale = [], []
        for replica, raw in everyone.items():
            replica = replica.decode()
            if replica == self.replica:
                continue
            entry = orjson.loads(raw)
            (stale if now - entry["at"] > self.stale_s else peers).append((replica, entry))
        self.stats.merge_peers([entry["deployments"] for _, entry in peers])
        self.peers = len(peers)
        self.merged_at = now
        self.oldest_peer_at = min((entry["at"] for _, entry in peers), default=None)
        if stale:
            try:
                await self.client.hdel(self.key, *[replica for replica, _ in stale])
            except (RedisError, OSError):
                pass

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self.interval_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            await self.client.hdel(self.key, self.replica)
        except (RedisError, OSError):
            pass
        await self.client.aclose()
