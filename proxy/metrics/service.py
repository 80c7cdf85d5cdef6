"""One worker's metrics: the request observer, the snapshot sampler and /metrics rendering."""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from proxy.call import Outcome
from proxy.metrics.exposition import CONTENT_TYPE, render, worker_exiting
from proxy.metrics.observer import RequestMetrics
from proxy.metrics.redis_probe import RedisProbe
from proxy.metrics.sampler import Sampler, Sources

__all__ = ["CONTENT_TYPE", "Metrics"]
SAMPLE_ENV = "LANEWAY_METRICS_SAMPLE_S"  # seconds between snapshot samples in each worker
log = logging.getLogger("laneway")


class Metrics:
    """Everything one worker does for metrics; its request observer joins ``observers``."""

    def __init__(self, state: Sources, observers: list[Callable[[Outcome], None]],
                 websocket_stats: object | None = None) -> None:
        self.state = state
        self.observer = RequestMetrics(lambda: state.policy.deployments)
        observers.append(self.observer)
        self.sampler = Sampler(state, self.observer, websocket_stats)
        self.redis = RedisProbe()
        self.interval = float(os.environ.get(SAMPLE_ENV, "1"))

    async def run(self) -> None:
        """Sample snapshots and probe Redis in the background until cancelled (lifespan shutdown)."""
        while True:
            self._sample()
            try:
                await self.redis.probe(self.state.policy)
            except Exception:
                log.exception("Redis latency probe failed; laneway_redis_ping_seconds pauses")
            await asyncio.sleep(self.interval)

    def render(self) -> bytes:
        self._sample()
        return render()

    def _sample(self) -> None:
        """A broken snapshot source must cost its gauges, not the scrape or the sampling loop."""
        try:
            self.sampler.sample()
        except Exception:
            log.exception("metrics sampling failed; /metrics shows the last sampled values")

    async def aclose(self) -> None:
        await self.redis.aclose()
        worker_exiting()
