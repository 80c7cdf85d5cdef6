"""Log lines of a real `laneway serve --workers 2`: every worker formats like the parent, access log included."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.redis_support import RedisServer
from tests.support import free_ports

ROOT = Path(__file__).resolve().parent.parent.parent
POLICY = """\
version: 1
auth: keys
keys:
  - name: ci-bot
    sha256: {sha}
    team: platform
store:
  redis_url: redis://laneway:${{TEST_REDIS_PASSWORD}}@127.0.0.1:{redis}/0
simulators:
  - {{name: sim, profile: instant, port: {sim}}}
deployments:
  - {{name: sim-gpu, provider: openai, model: sim-instant, base_url: "http://127.0.0.1:{sim}/v1", hardware: gpu}}
routes:
  - {{name: codex, candidates: [sim-gpu]}}
"""
KEY = "lw-test-key-5f1c2a9be0d4417f"
PASSWORD = "hunter2-not-logged"
REQUESTS = 12
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+\[(\d+)\]: ")


@pytest.fixture(scope="module")
def redis():
    """A Redis that lets the proxy in only as user `laneway` with PASSWORD (the URL then holds a password)."""
    with RedisServer(extra=("--user", "laneway", "on", f">{PASSWORD}", "~*", "&*", "+@all")) as server:
        yield server


def serve(tmp_path: Path, redis: RedisServer, fmt: str) -> list[str]:
    """Run `laneway serve --workers 2`, send REQUESTS chat calls on fresh connections, stop it; its stderr lines."""
    from proxy.config import hash_key

    sim, port = free_ports(2)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(sha=hash_key(KEY), sim=sim, redis=redis.port))
    env = dict(os.environ, PYTHONPATH=str(ROOT), LANEWAY_LOG_FORMAT=fmt, TEST_REDIS_PASSWORD=PASSWORD,
               LANEWAY_RELOAD_INTERVAL_S="0")
    env.pop("LANEWAY_LOG_LEVEL", None)
    log_file = tmp_path / "stderr.log"
    with log_file.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--policy", str(policy), "--port", str(port),
                                 "--workers", "2"], cwd=ROOT, env=env, stderr=stderr, stdout=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while log_file.read_text().count("worker ready") < 2:
                assert proc.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, "workers not ready within 30 s"
                time.sleep(0.1)
            for index in range(REQUESTS):  # every other one streamed (TTFT is logged for those)
                body = {"model": "codex", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": index % 2 == 1}
                response = httpx.post(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=10, json=body)
                assert response.status_code == 200, response.text
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # never leave a server (or its workers) behind a failed test
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return log_file.read_text().splitlines()


def test_json_lines_from_every_worker(tmp_path, redis):
    lines = serve(tmp_path, redis, "json")
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(entry["time"].endswith("Z") and entry["level"] and entry["pid"] for entry in entries)
    ready = {e["pid"] for e in entries if e["logger"] == "laneway" and e["message"].startswith("worker ready")}
    assert len(ready) == 2, "each worker logs at INFO, formatted like the parent"
    access = [e for e in entries if e["logger"] == "laneway.access"]
    assert len(access) == REQUESTS and {e["pid"] for e in access} <= ready
    for line in access:
        assert line["message"] == "request" and line["level"] == "INFO"
        assert (line["route"], line["deployment"], line["lane"], line["status"], line["key"], line["team"]) == (
            "codex", "sim-gpu", "gpu", 200, "ci-bot", "platform")
        assert line["request_id"] and line["tokens_out"] == 3 and line["tokens_in"] > 0
        assert 0 <= line["added_ms"] <= (line["ttft_ms"] if line["stream"] else 0) + line["total_ms"]
    assert [line["ttft_ms"] is not None for line in access].count(True) == REQUESTS // 2
    startup = " ".join(e["message"] for e in entries if e["pid"] not in ready)
    for fact in ("policy version", "auth: keys (1 keys)", f"store: standalone redis://laneway:***@127.0.0.1:{redis.port}/0", "workers: 2",
                 "simulators: sim (instant) on 127.0.0.1:"):
        assert fact in startup
    everything = "\n".join(lines)
    assert KEY not in everything and PASSWORD not in everything


def test_text_lines_from_every_worker_have_time_and_level(tmp_path, redis):
    lines = serve(tmp_path, redis, "text")
    assert all(TEXT_LINE.match(line) for line in lines if not line.startswith((" ", "Traceback"))), lines
    ready = {TEXT_LINE.match(line)[2] for line in lines if "laneway[" in line and "worker ready" in line}
    access = [line for line in lines if " laneway.access[" in line]
    assert len(ready) == 2 and len(access) == REQUESTS
    fields = json.loads(access[0].split(": request ", 1)[1])
    assert (fields["route"], fields["status"], fields["key"]) == ("codex", 200, "ci-bot")
