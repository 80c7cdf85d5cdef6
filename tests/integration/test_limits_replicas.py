"""Four `laneway serve` processes share one Redis (standalone, then a 3-master Cluster):
a burst larger than a deployment's limits is admitted exactly up to the limit, not beyond."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.redis_support import free_port, redis_cluster, redis_server  # noqa: F401  (fixtures)
from tests.support import simulator
from tests.integration.test_limits_resilience import serve_laneway

REPLICAS = 4
LEASE_MS = 300  # the -leases variants' store.leases.duration_ms
RPM = 40
TPM = 4000
MESSAGES = [{"role": "user", "content": "count to twenty please"}]

POLICY = """\
version: 1
auth: open
store: {{redis_url: '{url}', topology: {topology}, timeout_ms: 500, replicas: {replicas}{leases}}}
deployments:
  - name: {prefix}-requests
    provider: openai
    model: sim-instant
    base_url: {sim}/v1
    limits: {{rpm: {rpm}}}
  - name: {prefix}-tokens
    provider: openai
    model: sim-instant
    base_url: {sim}/v1
    limits: {{tpm: {tpm}}}
"""


@pytest.fixture(scope="module")
def provider():
    with simulator("instant") as server:
        yield server


@pytest.fixture(params=["standalone", "cluster", "standalone-leases", "cluster-leases"])
def replicas(request, tmp_path, provider):
    """Four replicas; the -leases variants admit from quota leases (store.leases) instead of one call each."""
    topology, _, leases = request.param.partition("-")
    redis = request.getfixturevalue("redis_server" if topology == "standalone" else "redis_cluster")
    prefix = f"r{time.monotonic_ns() % 10**8}"
    path = tmp_path / "replicas.yaml"
    path.write_text(POLICY.format(url=redis.url, topology=topology, replicas=REPLICAS, prefix=prefix,
                                  leases=f", leases: {{duration_ms: {LEASE_MS}}}" if leases else "",
                                  sim=provider.url, rpm=RPM, tpm=TPM))
    ports = [free_port() for _ in range(REPLICAS)]
    processes = []
    try:
        for port in ports:
            processes.append(serve_laneway(path, port))
        yield prefix, [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


async def burst(urls: list[str], model: str, count: int, concurrency: int = 32) -> list[httpx.Response]:
    """``count`` requests spread round-robin over every replica, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)
    body = {"model": model, "messages": MESSAGES, "max_tokens": 20}
    async with httpx.AsyncClient(timeout=30) as client:
        async def one(i: int) -> httpx.Response:
            async with gate:
                return await client.post(urls[i % len(urls)] + "/v1/chat/completions", json=body)

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_four_replicas_never_over_admit_requests(replicas):
    prefix, urls = replicas
    responses = asyncio.run(burst(urls, f"{prefix}-requests", 3 * RPM))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}  # never a 500
    admitted = statuses.count(200)
    assert admitted <= RPM                # zero over-admission
    assert admitted >= 0.98 * RPM         # and the limit is used
    served_by = {r.headers["x-laneway-deployment"] for r in responses if r.status_code == 200}
    assert served_by == {f"{prefix}-requests"}


def test_four_replicas_never_over_admit_tokens(replicas):
    prefix, urls = replicas
    model = f"{prefix}-tokens"
    responses = asyncio.run(burst(urls, model, 300))
    refused_once = False
    for _ in range(50):  # reconciliations free what was over-reserved: demand continues until none fits
        time.sleep(0.2)
        tail = asyncio.run(burst(urls, model, 4, concurrency=1))
        responses += tail
        if not all(r.status_code == 429 for r in tail):
            refused_once = False
        elif refused_once:
            break
        else:  # once more after the other replicas' leases (300 ms) have given back what they did not use
            refused_once = True
            time.sleep(LEASE_MS / 1000)
    assert {r.status_code for r in responses} <= {200, 429}
    used = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)
    assert used <= TPM, used              # zero over-admission: real usage never exceeds the window
    assert used >= 0.98 * TPM, used       # and the window is filled
