"""Policy hot reload: file changes, SIGHUP, bad files (with line, never echoing secrets), in-flight requests, several workers."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from proxy.config import load_policy
from proxy.config.reload import PolicyReloader
from tests.support import free_port, proxy_from_yaml

POLICY = """\
version: 1
auth: open
deployments:
  - name: wafer
    provider: openai
    model: sim-wafer
    base_url: {wafer}/v1
    hardware: wafer
  - name: gpu
    provider: openai
    model: sim-gpu
    base_url: {gpu}/v1
    hardware: gpu
routes:
  - name: codex
    candidates: [{first}]
"""


def write(path: Path, text: str) -> None:
    """Replace the file the way editors and config managers do: write aside, then rename."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for(check, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def admin(url: str) -> dict:
    return httpx.get(url + "/admin/policy", timeout=5).json()


def served_by(url: str) -> str:
    body = {"model": "codex", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=10).headers["x-laneway-deployment"]


@pytest.fixture
def policy_text(wafer_sim, gpu_sim):
    return lambda first: POLICY.format(wafer=wafer_sim.url, gpu=gpu_sim.url, first=first)


def test_a_changed_file_is_swapped_in(tmp_path, policy_text):
    with proxy_from_yaml(tmp_path, policy_text("wafer")) as proxy:
        before = admin(proxy.url)
        assert served_by(proxy.url) == "wafer" and before["last_error"] is None
        write(tmp_path / "policy.yaml", policy_text("gpu"))
        wait_for(lambda: admin(proxy.url)["version"] != before["version"], what="the reload")
        assert served_by(proxy.url) == "gpu"
        status = admin(proxy.url)
        assert status["reloads"] == {"ok": 1, "failed": 0} and status["loaded_at"] > before["loaded_at"]
        assert httpx.get(proxy.url + "/readyz").json()["version"] == status["version"]


def test_a_bad_file_keeps_the_old_policy_and_reports_where(tmp_path, policy_text, caplog):
    with proxy_from_yaml(tmp_path, policy_text("wafer")) as proxy:
        version = admin(proxy.url)["version"]
        write(tmp_path / "policy.yaml", policy_text("wafer").replace("    candidates: [wafer]", "    candidates: [wafr]"))
        status = wait_for(lambda: (s := admin(proxy.url))["reloads"]["failed"] and s, what="the rejection")
        assert status["version"] == version, "the old policy stays"
        error = status["last_error"]
        assert error["trigger"] == "file"
        assert error["errors"][0].startswith(f"{tmp_path / 'policy.yaml'}:16: routes[0].candidates[0]: unknown deployment 'wafr'")
        assert served_by(proxy.url) == "wafer"
        assert any("policy reload (file) rejected" in r.getMessage() and ":16:" in r.getMessage() for r in caplog.records)
        # Fixing the file recovers, and the last error stays visible for whoever looks later.
        write(tmp_path / "policy.yaml", policy_text("gpu"))
        wait_for(lambda: admin(proxy.url)["reloads"]["ok"] == 1, what="the fixed file")
        assert served_by(proxy.url) == "gpu" and admin(proxy.url)["last_error"] is not None


def test_in_flight_requests_finish_on_the_policy_they_started_with(tmp_path, policy_text):
    with proxy_from_yaml(tmp_path, policy_text("gpu")) as proxy:
        version = admin(proxy.url)["version"]
        body = {"model": "codex", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000, "stream": True}
        result: dict = {}

        def long_stream() -> None:
            with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=20) as response:
                result["deployment"] = response.headers["x-laneway-deployment"]
                result["text"] = "".join(response.iter_text())
                result["finished"] = time.monotonic()

        thread = threading.Thread(target=long_stream)
        thread.start()  # 3000 tokens at 2000 tok/s: about 1.5 s on the GPU lane
        wait_for(lambda: "deployment" in result, what="the stream to start")
        write(tmp_path / "policy.yaml", policy_text("wafer"))
        wait_for(lambda: admin(proxy.url)["version"] != version, what="the reload")
        swapped = time.monotonic()
        assert served_by(proxy.url) == "wafer", "new requests see the new policy"
        thread.join(20)
        assert result["deployment"] == "gpu" and result["text"].rstrip().endswith("data: [DONE]")
        assert result["finished"] > swapped, "the stream was still running on the old policy during the swap"


def test_reloader_refuses_a_missing_or_broken_file_without_swapping(tmp_path, policy_text):
    path = tmp_path / "p.yaml"
    path.write_text(policy_text("wafer"))
    applied = []
    reloader = PolicyReloader(load_policy(path), applied.append, interval_s=0)
    path.write_text("version: 1\nauth: open\ndeployments: [\n")
    assert reloader.reload("manual") is False and applied == []
    assert reloader.last_error.errors[0].startswith(f"{path}:4: YAML syntax error")
    path.unlink()
    assert not reloader.changed(), "a file missing mid-save is not a change yet"
    path.write_text(policy_text("gpu"))
    assert reloader.changed() and reloader.reload("manual") is True
    assert [p.routes["codex"].candidates for p in applied] == [("gpu",)]
    assert (reloader.reloads_ok, reloader.reloads_failed) == (1, 1)


def _serve(policy: Path, port: int, workers: int, interval: str) -> subprocess.Popen:
    env = {**os.environ, "LANEWAY_RELOAD_INTERVAL_S": interval}
    cmd = [sys.executable, "-m", "proxy.cli", "serve", "--policy", str(policy), "--port", str(port),
           "--workers", str(workers), "--no-simulators", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, proc.stdout.read()
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout=20, what="laneway serve")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_sighup_reloads_a_served_policy(tmp_path, policy_text):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text("wafer"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(policy, port, workers=1, interval="0")  # polling off: only the signal can reload
    try:
        version = admin(url)["version"]
        write(policy, policy_text("gpu"))
        time.sleep(0.3)
        assert admin(url)["version"] == version and served_by(url) == "wafer"
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: admin(url)["version"] != version, what="the SIGHUP reload")
        assert served_by(url) == "gpu" and proc.poll() is None
        write(policy, "version: 1\nauth: opne\n")
        proc.send_signal(signal.SIGHUP)
        status = wait_for(lambda: (s := admin(url))["last_error"] and s, what="the rejection")
        assert status["last_error"]["trigger"] == "sighup" and status["reloads"]["failed"] == 1
        assert served_by(url) == "gpu" and proc.poll() is None
    finally:
        _stop(proc)


def test_every_worker_reloads_when_the_file_changes(tmp_path, policy_text):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text("wafer"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(policy, port, workers=2, interval="0.2")
    try:
        def both_workers() -> dict[int, str]:
            seen: dict[int, str] = {}
            for _ in range(40):  # new connections spread over the workers
                status = admin(url)
                seen[status["worker_pid"]] = status["version"]
            return seen if len(seen) == 2 else {}

        before = wait_for(both_workers, timeout=10, what="answers from both workers")
        write(policy, policy_text("gpu"))
        new = load_policy(policy).version
        wait_for(lambda: (seen := both_workers()) and set(seen.values()) == {new}, what="both workers to reload")
        assert set(before.values()) != {new}
    finally:
        _stop(proc)


NESTED_POLICY = """\
version: 1
auth: open
deployments:
  - name: spark
    provider: {provider}
    model: m
    base_url: http://127.0.0.1:9/v1
"""


def test_a_too_deeply_nested_file_is_a_failed_reload_with_its_line(tmp_path, caplog):
    path = tmp_path / "p.yaml"
    path.write_text(NESTED_POLICY.format(provider="openai"))
    applied = []
    reloader = PolicyReloader(load_policy(path), applied.append, interval_s=0)
    path.write_text(NESTED_POLICY.format(provider="openai") + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    with caplog.at_level(logging.ERROR, logger="laneway.reload"):
        assert reloader.reload("file") is False
    assert applied == [] and reloader.status()["reloads"] == {"ok": 0, "failed": 1}
    assert reloader.last_error.errors == (f"{path}:8: nesting too deep (more than 64 levels of lists or mappings)",)
    assert [r.exc_info for r in caplog.records] == [None] and "nesting too deep" in caplog.text


def test_a_reload_error_names_the_variable_not_its_value(tmp_path, caplog, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text(NESTED_POLICY.format(provider="openai"))
    reloader = PolicyReloader(load_policy(path), lambda policy: None, interval_s=0)
    monkeypatch.setenv("LANEWAY_TEST_SECRET", "sk-live-5f1c2a9be0d4417f")
    path.write_text(NESTED_POLICY.format(provider="${LANEWAY_TEST_SECRET}"))
    with caplog.at_level(logging.ERROR, logger="laneway.reload"):
        assert reloader.reload("file") is False
    shown = " ".join(reloader.last_error.errors) + caplog.text
    assert "unknown provider '${LANEWAY_TEST_SECRET}'" in shown and "sk-live" not in shown
