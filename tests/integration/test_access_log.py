"""The access log through a real proxy: one line per HTTP request and per WebSocket turn, with the key's name only."""
from __future__ import annotations

import hashlib
import logging
import time

import httpx
import openai

from tests.support import proxy_from_yaml

KEY = "lw-access-log-key-5f1c2a9be0d4"
POLICY = """\
version: 1
auth: keys
keys:
  - {{name: alice, sha256: {sha}, team: platform}}
deployments:
  - {{name: codex-gpu, provider: openai, model: sim-codex, base_url: "{gpu}/v1", hardware: gpu}}
routes:
  - {{name: deep, candidates: [codex-gpu]}}
"""


def lines(caplog, count: int) -> list[logging.LogRecord]:
    for _ in range(100):  # the observer runs as the request finishes, just after the last byte
        found = [r for r in caplog.records if r.name == "laneway.access"]
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"{len(found)} access lines, expected {count}")


def test_http_request_and_websocket_turn_each_log_one_line(tmp_path, gpu_sim, caplog):
    text = POLICY.format(sha=hashlib.sha256(KEY.encode()).hexdigest(), gpu=gpu_sim.url)
    with caplog.at_level(logging.INFO, logger="laneway.access"), proxy_from_yaml(tmp_path, text) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}", "x-request-id": "req-http-1"},
                              json={"model": "deep", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert response.status_code == 200
        refused = httpx.post(proxy.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                             json={"model": "nosuch", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 404
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
        with client.responses.connect() as conn:
            conn.response.create(model="deep", input="hi", max_output_tokens=4)
            for event in conn:
                if event.type == "response.completed":
                    break
        http, missing, turn = lines(caplog, 3)
    assert (http.getMessage(), http.fields["request_id"], http.fields["transport"], http.fields["status"]) == (
        "request", "req-http-1", "http", 200)
    assert (turn.getMessage(), turn.fields["transport"], turn.fields["endpoint"], turn.fields["tokens_out"]) == (
        "turn", "websocket", "responses", 4)
    assert (missing.fields["status"], missing.fields["deployment"], missing.fields["added_ms"], missing.fields["key"]) == (
        404, None, None, "alice"), "refused requests are logged too"
    for line in (http, turn):
        assert (line.fields["route"], line.fields["deployment"], line.fields["lane"], line.fields["key"]) == (
            "deep", "codex-gpu", "gpu", "alice")
        assert KEY not in str(line.fields)
    assert turn.fields["ttft_ms"] is not None and turn.fields["total_ms"] >= turn.fields["ttft_ms"]
