"""Redis trouble and crashed replicas: fail-open / fail-closed, recovery, lease expiry."""
from __future__ import annotations

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
            assert proxy.app.state.limiter.stats.local_admissions >= 5
            assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1  # once per incident
            redis.start()
            time.sleep(1.1)
            statuses = wait_for_shared(proxy.url, redis, rpm_key)
            assert 500 not in statuses and 503 not in statuses
            assert any("reachable again" in r.getMessage() for r in caplog.records)


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


def test_fail_closed_refuses_with_503_then_recovers(tmp_path, wafer_sim):
    with RedisServer() as redis:
        text, suffix = policy(redis.url, wafer_sim.url, "fail_closed")
        with proxy_from_yaml(tmp_path, text) as proxy:
            assert post(proxy.url).status_code == 200
            redis.stop()
            refused = post(proxy.url)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "rate_limit_store_unavailable"
            assert refused.headers["retry-after"] == "1"
            assert max(timed(proxy.url)[1] for _ in range(3)) < 1.0
            redis.start()
            statuses = wait_for_shared(proxy.url, redis, f"lw:{{c:team-{suffix}}}:rpm")
            assert statuses[-1] == 200 and 500 not in statuses


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
