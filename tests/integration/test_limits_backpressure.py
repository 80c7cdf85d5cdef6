"""Past Redis's capacity (a burst, a paused Redis) admissions stay shared and exact: a slow reply
is back-pressure, never a reason to admit from the local fallback or to refuse with 503."""
from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
import redis.asyncio as aioredis

from proxy.config.loader import parse_policy
from proxy.errors import ClientLimited, StoreUnavailable
from proxy.limits.limiter import Limiter
from tests.redis_support import redis_server  # noqa: F401  (fixture)

LIMIT = 300
POLICY = """\
version: 1
auth: keys
store: {{redis_url: '{url}', on_store_error: {mode}, timeout_ms: 100, replicas: 2}}
keys:
  - {{name: {key}, sha256: {sha}, limits: {{rpm: {limit}}}}}
deployments:
  - {{name: dep-{key}, provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1', limits: {{rpm: 1000000, tpm: 100000000}}}}
"""


async def burst(limiter: Limiter, key: str, url: str, workers: int, seconds: float) -> dict[int, int]:
    """``workers`` tasks admit (and settle) for ``seconds`` while Redis pauses for 200 ms, twice
    its timeout; answers the statuses: 200 admitted, 429, 503."""
    statuses = {200: 0, 429: 0, 503: 0}
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            ticket = limiter.borrow(key, 10, 10)
            try:
                await ticket.admit(f"dep-{key}")
            except (ClientLimited, StoreUnavailable) as refused:
                statuses[429 if isinstance(refused, ClientLimited) else 503] += 1
                await asyncio.sleep(0.005)
                continue
            statuses[200] += 1
            await asyncio.sleep(0)  # the upstream call
            limiter.give_back(ticket, 20)

    pauser = aioredis.Redis.from_url(url)
    try:
        tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
        await asyncio.sleep(seconds / 4)
        await pauser.execute_command("CLIENT", "PAUSE", 200, "ALL")
        await asyncio.gather(*tasks)
    finally:
        await pauser.aclose()
        await limiter.aclose()
    return statuses


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_a_paused_redis_under_a_burst_admits_exactly_the_limit_and_nothing_locally(redis_server, mode):  # noqa: F811
    key = f"bp-{mode}-{time.monotonic_ns()}"
    text = POLICY.format(url=redis_server.url, mode=mode, key=key, sha=hashlib.sha256(key.encode()).hexdigest(), limit=LIMIT)
    limiter = Limiter.from_policy(parse_policy(text))
    statuses = asyncio.run(burst(limiter, key, redis_server.url, workers=128, seconds=0.8))
    assert limiter.stats.local_admissions == 0 and limiter.stats.store_errors == 0
    assert statuses[503] == 0
    assert statuses[200] == LIMIT and statuses[429] > 0  # exact: the shared window, nothing on the side
    assert redis_server.cli("ZCARD", f"lw:{{c:{key}}}:rpm") == str(LIMIT)
