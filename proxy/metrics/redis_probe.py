"""Redis round-trip latency as each worker sees it: one PING per Redis per sample interval.

The limiter and the ledger talk to Redis on their own schedules and keep only error counts;
a PING on a connection of our own measures the round trip every one of their calls pays,
without timing code inside their paths. Bounded by a short timeout, so a dead Redis costs
the sampler at most that long and shows up as a failed probe.
"""
from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from proxy.config.schema import Policy
from proxy.metrics import families as m
from proxy.store import connect


class RedisProbe:
    def __init__(self) -> None:
        self._clients: dict[connect.Target, Redis | RedisCluster] = {}

    async def probe(self, policy: Policy) -> None:
        for component, target in connect.probe_targets(policy).items():
            client = self._clients.get(target)
            if client is None:
                client = self._clients[target] = connect.client(target)
                m.redis_ping_failures.labels(component)  # the series exists (at 0) from the first probe
            started = time.perf_counter()
            try:
                await asyncio.wait_for(client.ping(), target.timeout_s)
            except Exception:  # any failure is the finding: Redis did not answer a PING in time
                m.redis_ping_failures.labels(component).inc()
                continue
            m.redis_ping.labels(component).observe(time.perf_counter() - started)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
