"""Redis trouble and crashed replicas: fail-open / fail-closed, recovery, lease expiry."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import orjson

from proxy.config.loader import parse_policy
from proxy.limits.limiter import Limiter
from tests.redis_support import RedisServer, free_port
from tests.support import proxy_from_yaml

KEY = "lw-resilience-key"
MESSAGES = [{"role": "user", "content": "hello"}]

POLICY = """\
version: 1
auth: keys
store:
  redis_url: {redis_url}
  on_store_error: {mode}
  replicas: 2
  timeout_ms: 100
  lease_s: {lease_s}
keys:
  - name: {key_name}
    sha256: {sha}
    limits: {{rpm: 10}}
deployments:
  - name: {wafer}
    provider: cerebras
    model: sim-spark
    base_url: {wafer_url}/v1
    limits: {{concurrency: 1}}
routes:
  - name: fast
    candidates: [{wafer}]
"""


def policy(redis_url: str, wafer_url: str, mode: str = "fail_open", lease_s: float = 30) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:6]
    text = POLICY.format(redis_url=redis_url, mode=mode, lease_s=lease_s, key_name=f"team-{suffix}",
                         sha=hashlib.sha256(KEY.encode()).hexdigest(), wafer=f"wafer-{suffix}", wafer_url=wafer_url)
    return text, suffix


def post(url: str, max_tokens: int = 3) -> httpx.Response:
    body = {"model": "fast", "messages": MESSAGES, "max_tokens": max_tokens}
    return httpx.post(url + "/v1/chat/completions", content=orjson.dumps(body), headers={"authorization": f"Bearer {KEY}"}, timeout=10)


def timed(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    status = post(url).status_code
    return status, time.perf_counter() - started


def wait_for_shared(url: str, server: RedisServer, key: str, timeout: float = 5.0) -> list[int]:
    """Send requests until one is counted in Redis again (the store is retried once a second)."""
    statuses = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses.append(post(url).status_code)
        if int(server.cli("ZCARD", key) or 0) > 0:
            return statuses
        time.sleep(0.2)
    raise AssertionError(f"requests never reached Redis again: {statuses}")


def test_fail_open_serves_with_local_limits_then_recovers(tmp_path, wafer_sim, caplog):
    caplog.set_level(logging.WARNING, logger="laneway.limits")
    with RedisServer() as redis:
        text, suffix = policy(redis.url, wafer_sim.url, "fail_open")
        with proxy_from_yaml(tmp_path, text) as proxy:
            rpm_key = f"lw:{{c:team-{suffix}}}:rpm"
            assert [post(proxy.url).status_code for _ in range(2)] == [200, 200]
            assert redis.cli("ZCARD", rpm_key) == "2"
            redis.stop()
            results = [timed(proxy.url) for _ in range(7)]
            # rpm 10 over 2 replicas: 5 per replica while Redis is away; never a 500, never slow
            assert [status for status, _ in results] == [200] * 5 + [429] * 2
            assert max(seconds for _, seconds in results) < 1.0
            assert proxy.app.state.limiter.stats.local_admissions == 5  # admitted ones only, not the 2 refused
            assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1  # once per incident
            redis.start()
            time.sleep(1.1)
            statuses = wait_for_shared(proxy.url, redis, rpm_key)
            assert 500 not in statuses and 503 not in statuses
            # the incident's end accounts for every request admitted locally meanwhile
            assert any("reachable again" in r.getMessage() and "(5 requests were admitted with per-replica limits"
                       in r.getMessage() for r in caplog.records)


def test_fail_open_bounds_a_hung_redis_by_the_timeout(tmp_path, wafer_sim):
    with RedisServer() as redis:
        text, _ = policy(redis.url, wafer_sim.url, "fail_open")
        with proxy_from_yaml(tmp_path, text) as proxy:
            assert post(proxy.url).status_code == 200
            os.kill(redis.process.pid, signal.SIGSTOP)  # accepts connections, never answers
            try:
                status, seconds = timed(proxy.url)
                assert status == 200 and seconds < 1.0
            finally:
                os.kill(redis.process.pid, signal.SIGCONT)


def refused_while_down(url: str, code: str, count: int = 6) -> None:
    """``count`` requests 50 ms apart (well within the fail-open retry second) are each refused
    with a 503 naming ``code`` and Retry-After, promptly: none admitted, none an error, none slow."""
    for _ in range(count):
        started = time.perf_counter()
        response = post(url)
        assert (response.status_code, response.json()["error"]["code"]) == (503, code)
        assert response.headers["retry-after"] == "1"
        assert time.perf_counter() - started < 1.0
        time.sleep(0.05)


def test_fail_closed_refuses_every_request_with_503_then_recovers(tmp_path, wafer_sim):
    with RedisServer() as redis:
        text, suffix = policy(redis.url, wafer_sim.url, "fail_closed")
        with proxy_from_yaml(tmp_path, text) as proxy:
            assert post(proxy.url).status_code == 200
            redis.stop()
            refused_while_down(proxy.url, "rate_limit_store_unavailable")
            assert proxy.app.state.limiter.stats.local_admissions == 0
            redis.start()
            # the first request after Redis is back is admitted, and counted there
            assert wait_for_shared(proxy.url, redis, f"lw:{{c:team-{suffix}}}:rpm") == [200]


BUDGET_POLICY = """\
version: 1
auth: keys
store: {{redis_url: '{redis_url}', on_store_error: fail_closed, timeout_ms: 100}}
keys:
  - {{name: team-{suffix}, sha256: {sha}, budget: {{daily_hard_usd: 100}}}}
deployments:
  - {{name: wafer-{suffix}, provider: cerebras, model: sim-spark, base_url: '{wafer_url}/v1'}}
routes:
  - {{name: fast, candidates: [wafer-{suffix}]}}
prices:
  sim-spark:
    - {{effective_from: 2020-01-01, input_per_mtok: 1, output_per_mtok: 1, status: announced}}
"""


def test_fail_closed_budgets_refuse_every_request_with_503_then_recover(tmp_path, wafer_sim):
    suffix = uuid.uuid4().hex[:6]
    with RedisServer() as redis:
        text = BUDGET_POLICY.format(redis_url=redis.url, suffix=suffix, sha=hashlib.sha256(KEY.encode()).hexdigest(),
                                    wafer_url=wafer_sim.url)
        with proxy_from_yaml(tmp_path, text) as proxy:
            assert post(proxy.url).status_code == 200
            redis.stop()
            refused_while_down(proxy.url, "budget_store_unavailable")
            redis.start()
            assert post(proxy.url).status_code == 200
            assert redis.cli("KEYS", f"laneway:budget:*team-{suffix}*") != ""  # counted in Redis again


def serve_laneway(policy_path, port: int) -> subprocess.Popen:
    """`laneway serve` as its own process (a replica), once it answers /healthz."""
    laneway = os.path.join(os.path.dirname(sys.executable), "laneway")
    process = subprocess.Popen([laneway, "serve", "--policy", str(policy_path), "--port", str(port), "--no-simulators",
                                "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("laneway serve did not start")
        time.sleep(0.1)


def test_a_killed_replicas_concurrency_slot_expires_with_its_lease(tmp_path, gpu_sim):
    with RedisServer() as redis:
        text, suffix = policy(redis.url, gpu_sim.url, "fail_closed", lease_s=1.5)
        path = tmp_path / "replica.yaml"
        path.write_text(text)
        port = free_port()
        replica = serve_laneway(path, port)
        try:
            body = {"model": "fast", "messages": MESSAGES, "max_tokens": 20000, "stream": True}
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", content=orjson.dumps(body),
                              headers={"authorization": f"Bearer {KEY}"}, timeout=10) as response:
                assert response.status_code == 200
                chunks = response.iter_bytes()  # kept open: a closed generator would hang up the stream
                reading_until = time.monotonic() + 1.0  # the live replica renews its lease past the first expiry
                while time.monotonic() < reading_until:
                    next(chunks)
                assert redis.cli("ZCARD", f"lw:{{d:wafer-{suffix}}}:conc") == "1"
                replica.send_signal(signal.SIGKILL)  # crash: no settle, no release
                replica.wait(timeout=10)
        finally:
            replica.kill()
        with proxy_from_yaml(tmp_path, text, name="survivor.yaml") as survivor:
            held = post(survivor.url)
            assert held.status_code == 429  # the dead replica's slot is still leased
            time.sleep(1.6)
            assert post(survivor.url).status_code == 200  # ... until the lease runs out


def test_a_provider_report_lost_with_redis_is_logged_as_the_incident_never_raised(caplog):
    """Learning no longer has a call of its own: when the queued write is lost, the failover
    still hears of it (counted, logged) and no request sees an error."""

    async def main(server: RedisServer) -> None:
        text, suffix = policy(server.url, "http://127.0.0.1:9")
        limiter = Limiter.from_policy(parse_policy(text))
        ticket = limiter.borrow(f"team-{suffix}", 10, 5)
        await ticket.admit(f"wafer-{suffix}")
        limiter.give_back(ticket, 12)
        server.stop()
        limiter.learner.learn(f"wafer-{suffix}", 200, [(b"x-ratelimit-remaining-requests", b"5"),
                                                         (b"x-ratelimit-limit-requests", b"10"),
                                                         (b"x-ratelimit-reset-requests", b"30s")])
        await asyncio.sleep(0.05)  # the settle tasks run; the queue waits for its tick
        await limiter.store.flush()
        assert limiter.store.dropped_writes == 2  # the settle and the report
        assert limiter.stats.store_errors == 1
        await limiter.aclose()

    with caplog.at_level(logging.WARNING, logger="laneway.limits"), RedisServer() as server:
        asyncio.run(main(server))
    assert any("rate-limit store unreachable" in r.getMessage() for r in caplog.records)
