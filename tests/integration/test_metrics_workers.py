"""`laneway serve --workers 2`: /metrics adds up both workers, whichever one answers the scrape."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import websockets.sync.client as ws_client
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from tests.support import free_port, simulator
from tests.unit.metrics.test_observer import scrape, total

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 48

POLICY = """\
version: 1
auth: open
deployments:
  - name: spark-wafer
    provider: cerebras
    model: sim-spark
    base_url: {wafer}/v1
    hardware: wafer
routes:
  - name: codex
    candidates: [spark-wafer]
"""


def wait_ready(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "laneway serve exited during startup"
        assert time.monotonic() < deadline, "not ready within 60 s"
        time.sleep(0.1)


def stale_counter(directory: Path) -> None:
    """A previous run's sample for a pid long gone: serve must clear it, not add it in."""
    key = mmap_key("laneway_requests_total", "laneway_requests_total",
                   ("route", "deployment", "lane", "status", "transport", "endpoint"),
                   ("codex", "spark-wafer", "wafer", "200", "http", "chat"), "stale")
    stale = MmapedDict(str(directory / "counter_1.db"))
    stale.write_value(key, 1000.0, 0.0)
    stale.close()


def test_totals_are_exact_across_two_workers(tmp_path):
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    stale_counter(metrics_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with simulator("wafer", ttft_ms=30, tokens_per_s=2000) as wafer:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(wafer=wafer.url))
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--policy", str(policy), "--port", str(port),
                                 "--workers", "2", "--log-level", "warning"], cwd=ROOT, env=env)
        try:
            wait_ready(base, proc)

            def call(i: int) -> int:
                with httpx.Client() as client:  # a new connection each time, so both workers accept some
                    body = {"model": "codex", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 4 + i % 5}
                    response = client.post(base + "/v1/chat/completions", json=body)
                    assert response.status_code == 200
                    return response.json()["usage"]["completion_tokens"]

            with ThreadPoolExecutor(8) as pool:
                out_tokens = sum(pool.map(call, range(REQUESTS)))

            pids = {int(m.group(1)) for f in metrics_dir.glob("counter_*.db") if (m := re.match(r"counter_(\d+)\.db", f.name))}
            assert 1 not in pids, "the stale file from a previous run was not cleared"
            assert len(pids) == 2, f"expected both workers to have served requests, got pids {pids}"
            for _ in range(6):  # whichever worker answers, it reports both workers' totals
                samples = scrape(base)
                assert total(samples, "laneway_requests_total", route="codex", status="200") == REQUESTS
                assert total(samples, "laneway_tokens_total", kind="output") == out_tokens
                assert total(samples, "laneway_request_duration_seconds_count") == REQUESTS
                assert samples[("laneway_breaker_state", frozenset({("deployment", "spark-wafer")}))] == 0

            # A gauge adds up live workers: one open socket is 1 whichever worker answers the scrape
            # (the other reports what it sampled within the last second).
            with ws_client.connect(f"ws://127.0.0.1:{port}/v1/responses"):
                time.sleep(1.5)
                for _ in range(6):
                    assert total(scrape(base), "laneway_websocket_connections_open") == 1
            time.sleep(1.5)
            assert total(scrape(base), "laneway_websocket_connections_open") == 0
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    # Workers that exit drop their live gauges; the directory named by the operator is kept.
    assert metrics_dir.is_dir()
    assert not list(metrics_dir.glob("gauge_live*")), sorted(p.name for p in metrics_dir.iterdir())
