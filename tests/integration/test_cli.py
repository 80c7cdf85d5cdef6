"""The `laneway` command as a user runs it: check a policy, serve the demo, stop cleanly."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.support import free_ports

ROOT = Path(__file__).resolve().parents[2]
LANEWAY = [sys.executable, "-m", "proxy.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LANEWAY, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_check_accepts_shipped_policies():
    for name in ("demo.yaml", "example-production.yaml"):
        result = run("check", str(ROOT / "policies" / name))
        assert result.returncode == 0, result.stderr
        assert "ok (version" in result.stdout


def test_check_reports_every_error_with_line_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nauth: open\ndeployments:\n"
        "  - name: a\n    provider: nosuch\n    model: m\n    base_url: ftp://x\n"
        "routes:\n  - name: r\n    candidates: [missing]\n"
    )
    result = run("check", str(bad))
    assert result.returncode == 1
    assert f"{bad}:5: deployments[0].provider:" in result.stderr
    assert f"{bad}:7: deployments[0].base_url:" in result.stderr
    assert f"{bad}:10: routes[0].candidates" in result.stderr


def test_hash_key_matches_what_the_policy_expects():
    result = run("hash-key", "lw-example-key-change-me")
    assert result.returncode == 0 and len(result.stdout.strip()) == 64


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_serve_demo_policy_then_stop_gracefully_on_sigterm(tmp_path):
    wafer, gpu, port = free_ports(3)
    demo = (ROOT / "policies" / "demo.yaml").read_text().replace("4101", str(wafer)).replace("4102", str(gpu))
    policy = tmp_path / "demo.yaml"
    policy.write_text(demo)
    proc = subprocess.Popen([*LANEWAY, "serve", "--policy", str(policy), "--port", str(port)], cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "laneway serve exited during startup"
            assert time.monotonic() < deadline, "not ready within 60 s"
            time.sleep(0.1)
        ok = httpx.post(base + "/v1/chat/completions", json={"model": "codex", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert ok.status_code == 200 and ok.headers["x-laneway-lane"] == "wafer"

        # A stream in flight when SIGTERM arrives still finishes (GPU lane: ~80 tok/s).
        received: list[bytes] = []
        first_token = threading.Event()

        def stream() -> None:
            with httpx.stream("POST", base + "/v1/chat/completions", timeout=30,
                              json={"model": "deep", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "stream": True}) as response:
                for chunk in response.iter_bytes():
                    received.append(chunk)
                    if b"tok1" in chunk:
                        first_token.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_token.wait(10)
        proc.send_signal(signal.SIGTERM)
        reader.join(30)
        assert b"".join(received).endswith(b"data: [DONE]\n\n"), "in-flight stream was cut by shutdown"
        assert proc.wait(timeout=30) == 0
        assert not _listening(wafer) and not _listening(gpu), "simulators outlived the proxy"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
