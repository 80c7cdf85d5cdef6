"""A deployment's ``timeouts.total_s`` ends an OpenAI-compatible exchange, through the running proxy."""
from __future__ import annotations

import time

import httpx
import orjson
import pytest

from tests.support import proxy_from_yaml, record_outcomes, simulator

POLICY = """\
version: 1
auth: open
deployments:
  - name: slow
    provider: openai
    model: sim-slow
    base_url: {url}/v1
    timeouts: {{connect_s: 1, first_byte_s: 5, idle_s: 5, total_s: 1}}
routes:
  - {{name: patient, candidates: [slow]}}
"""


@pytest.fixture(scope="module")
def slow_sim():
    with simulator("gpu", ttft_ms=10, tokens_per_s=40) as server:  # 400 tokens: 10 s
        yield server


@pytest.mark.parametrize("path, body, terminal", [
    ("chat/completions", {"messages": [{"role": "user", "content": "go"}]}, b'data: {"error":'),
    ("responses", {"input": "go"}, b"event: response.failed\ndata: "),  # after an `error` event
])
def test_a_stream_past_total_s_ends_with_the_in_band_error(tmp_path, slow_sim, path, body, terminal):
    with record_outcomes(proxy_from_yaml(tmp_path, POLICY.format(url=slow_sim.url))) as proxy:
        started = time.monotonic()
        payload = {"model": "patient", "max_tokens" if path != "responses" else "max_output_tokens": 400,
                   "stream": True, **body}
        with httpx.stream("POST", f"{proxy.url}/v1/{path}", content=orjson.dumps(payload), timeout=15) as response:
            assert response.status_code == 200
            streamed = b"".join(response.iter_bytes())
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 2.5  # was ~10 s: total_s was ignored
        assert streamed.rstrip().rsplit(b"\n\n", 1)[-1].startswith(terminal)
        assert b"upstream_stream_error" in streamed and b"(timeout)" in streamed
        if path == "responses":
            assert b"event: error\ndata: " in streamed
        (outcome,) = proxy.outcomes
        assert (outcome.status, outcome.error_code) == (502, "upstream_stream_error")
        assert outcome.output_tokens > 0  # what arrived before the cut is still billed


def test_a_whole_response_past_total_s_is_a_502(tmp_path, slow_sim):
    with proxy_from_yaml(tmp_path, POLICY.format(url=slow_sim.url)) as proxy:
        started = time.monotonic()
        response = httpx.post(f"{proxy.url}/v1/chat/completions", timeout=15, content=orjson.dumps(
            {"model": "patient", "max_tokens": 400, "messages": [{"role": "user", "content": "go"}]}))
        assert time.monotonic() - started < 2.5
        assert response.status_code in (502, 504)
        assert response.json()["error"]["type"] == "server_error"
