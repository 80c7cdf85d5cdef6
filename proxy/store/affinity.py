"""Response affinity storage: which deployment holds a stored response, for a while.

A provider keeps a stored response (``store: true``) on the deployment that produced it, so a
continuation (``previous_response_id``) or a retrieve / delete / cancel must go back there. Every
replica must know it, so the map lives in Redis when the policy has one (one key per response,
expiring after the TTL), in process memory otherwise (bounded, oldest first out).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

from redis.exceptions import RedisError

from proxy.store.base import StoreError

KEY_PREFIX = "laneway:affinity:"


class AffinityStore(Protocol):
    async def owner(self, response_id: str) -> str | None:
        """The deployment that holds ``response_id``, if known and not expired."""

    async def remember(self, response_id: str, deployment: str) -> None: ...


class MemoryAffinity:
    """The embedded default: at most ``capacity`` responses, each kept ``ttl_s``."""

    def __init__(self, ttl_s: float, capacity: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def owner(self, response_id: str) -> str | None:
        found = self._owners.get(response_id)
        if found is None:
            return None
        if found[1] < time.monotonic():
            del self._owners[response_id]
            return None
        return found[0]

    async def remember(self, response_id: str, deployment: str) -> None:
        self._owners[response_id] = (deployment, time.monotonic() + self.ttl_s)
        self._owners.move_to_end(response_id)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)


class RedisAffinity:
    """Shared by every replica: ``SET key deployment EX ttl``; one key per response, so it spreads over a Cluster."""

    def __init__(self, client, ttl_s: float) -> None:
        self.client = client  # redis.asyncio.Redis or RedisCluster, from the store's connection
        self.ttl_s = max(1, int(ttl_s))

    async def owner(self, response_id: str) -> str | None:
        try:
            value = await self.client.get(KEY_PREFIX + response_id)
        except (RedisError, OSError) as exc:
            raise StoreError(f"affinity lookup failed: {exc}") from exc
        return value.decode() if isinstance(value, bytes) else value

    async def remember(self, response_id: str, deployment: str) -> None:
        try:
            await self.client.set(KEY_PREFIX + response_id, deployment, ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            raise StoreError(f"affinity write failed: {exc}") from exc
