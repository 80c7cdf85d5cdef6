"""J: `laneway serve --log-level debug` never prints a client's proxy key (the WebSocket handshake is logged)."""
from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx
import websockets.sync.client as ws_client

from proxy.api.log_redaction import RedactSecrets
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "lw-secret-key-that-must-not-leak"
POLICY = """\
version: 1
auth: keys
keys:
  - {{name: alice, sha256: {sha}}}
deployments:
  - {{name: nowhere, provider: openai, model: m, base_url: "http://127.0.0.1:{port}/v1"}}
routes:
  - {{name: codex, candidates: [nowhere]}}
"""


def test_debug_logs_of_a_websocket_handshake_carry_no_key(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(sha=hashlib.sha256(KEY.encode()).hexdigest(), port=free_port()))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--policy", str(policy), "--port", str(port),
                             "--log-level", "debug", "--no-simulators"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "laneway serve did not start"
            time.sleep(0.1)
        with ws_client.connect(f"ws://127.0.0.1:{port}/v1/responses",
                               additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            ws.send('{"type": "response.processed", "response_id": "x"}')
        httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"authorization": f"Bearer {KEY}"})
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert "< GET /v1/responses HTTP/1.1" in output  # the handshake was logged at debug...
    assert "< authorization: [redacted]" in output.lower()
    assert KEY not in output and KEY[3:] not in output  # ...without the key


def test_the_filter_blanks_header_records_and_bearer_credentials_anywhere():
    def render(msg: str, *args: object) -> str:
        record = logging.LogRecord("x", logging.DEBUG, __file__, 1, msg, args, None)
        RedactSecrets().filter(record)
        return record.getMessage()

    assert render("< %s: %s", "authorization", "Bearer sk-1") == "< authorization: [redacted]"
    assert render("> %s: %s", "X-Api-Key", "sk-2") == "> X-Api-Key: [redacted]"
    assert render("< %s: %s", "user-agent", "codex") == "< user-agent: codex"
    assert render("headers %r", {"authorization": "Bearer sk-3"}) == "headers {'authorization': 'Bearer [redacted]'}"
    assert render("nothing secret %d", 5) == "nothing secret 5"
