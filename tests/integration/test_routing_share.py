"""Latency statistics shared between replicas through a real (throwaway) Redis."""
from __future__ import annotations

import asyncio
import uuid

from proxy.call import Outcome
from proxy.config.schema import Priors
from proxy.routing.share import StatsSharing
from proxy.routing.stats import LatencyStats
from proxy.store.connect import Target
from tests.redis_support import free_port, redis_server  # noqa: F401  (fixture)

PRIORS = Priors(ttft_ms=500, tokens_per_s=100)


def measured(stats: LatencyStats, name: str, ttft_ms: float, tokens_per_s: float, times: int = 10) -> None:
    for _ in range(times):
        stats.started(name)
        first = 1.0 + ttft_ms / 1000
        stats.finished(Outcome("r", "chat", "codex", "k", None, deployment=name, status=200, stream=True,
                               input_tokens=100, output_tokens=101, upstream_started=1.0, first_token_at=first,
                               finished=first + 100 / tokens_per_s))


def test_a_cold_replica_routes_on_what_another_measured(redis_server):
    async def scenario() -> None:
        key = f"test:latency:{uuid.uuid4().hex}"
        a_stats, b_stats = LatencyStats(), LatencyStats()
        a = StatsSharing(a_stats, Target(redis_server.url), key=key, stale_s=0.5)
        b = StatsSharing(b_stats, Target(redis_server.url), key=key, stale_s=0.5)
        measured(a_stats, "wafer", ttft_ms=40, tokens_per_s=2000)
        assert b_stats.get("wafer").estimate(PRIORS, 100).warm is False
        await a.sync()
        await b.sync()
        estimate = b_stats.get("wafer").estimate(PRIORS, 100)
        assert estimate.warm and abs(estimate.ttft_ms - 40) < 1 and abs(estimate.tokens_per_s - 2000) < 20
        assert b.peers == 1
        # B's own samples are blended with A's by sample count: 10 at 40 ms + 10 at 140 ms.
        measured(b_stats, "wafer", ttft_ms=140, tokens_per_s=2000)
        assert abs(b_stats.get("wafer").estimate(PRIORS, 100).ttft_ms - 90) < 5
        # A replica that stopped publishing is dropped once stale.
        await asyncio.sleep(0.6)
        await b.sync()
        assert b.peers == 0 and abs(b_stats.get("wafer").estimate(PRIORS, 100).ttft_ms - 140) < 1
        await a.aclose()
        await b.aclose()

    asyncio.run(scenario())


def test_no_redis_keeps_local_statistics():
    async def scenario() -> None:
        stats = LatencyStats()
        measured(stats, "gpu", ttft_ms=300, tokens_per_s=80)
        sharing = StatsSharing(stats, Target(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2), key="unused")
        await sharing.sync()
        assert sharing.failures == 1
        assert abs(stats.get("gpu").estimate(PRIORS, 100).ttft_ms - 300) < 1
        await sharing.aclose()

    asyncio.run(scenario())
