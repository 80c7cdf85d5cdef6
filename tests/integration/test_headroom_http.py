"""Provider headroom end to end: a Cerebras-dialect 429 takes the fast lane out for its wait, not the day."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.support import proxy_from_yaml, simulator

POLICY = """\
version: 1
auth: open
deployments:
  - name: wafer
    provider: cerebras
    model: sim-wafer
    base_url: {wafer}/v1
    hardware: wafer
    priors: {{ttft_ms: 60, tokens_per_s: 1500}}
{limits}  - name: gpu
    provider: openai
    model: sim-gpu
    base_url: {gpu}/v1
    hardware: gpu
    priors: {{ttft_ms: 400, tokens_per_s: 80}}
routes:
  - name: codex
    strategy: latency
    candidates: [wafer, gpu]
"""


def post(server) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", timeout=10, json={
        "model": "codex", "max_tokens": 20, "messages": [{"role": "user", "content": "rename this"}]})


@pytest.mark.parametrize("limits", ["", "    limits: {concurrency: 50}\n"], ids=["undeclared", "limiter-active"])
def test_the_fast_lane_is_used_again_once_a_cerebras_429s_wait_has_passed(tmp_path, limits):
    # Cerebras headers: the only request window is per day (reset ~86,400 s), tokens per minute.
    with simulator("wafer", ttft_ms=5, tokens_per_s=4000, dialect="cerebras", rpd=100_000, tpm=1_000_000) as wafer, \
            simulator("gpu", ttft_ms=20, tokens_per_s=2000) as gpu, \
            proxy_from_yaml(tmp_path, POLICY.format(wafer=wafer.url, gpu=gpu.url, limits=limits)) as server:
        assert post(server).headers["x-laneway-deployment"] == "wafer"
        httpx.post(wafer.url + "/sim/faults", json={"mode": "429", "count": 1}).raise_for_status()  # retry-after: 1
        refused = post(server)
        assert refused.headers["x-laneway-route-reason"] == "fallback:wafer=429"
        assert "x-ratelimit-reset-requests-day" in httpx.post(wafer.url + "/v1/chat/completions", json={
            "model": "sim-wafer", "messages": [{"role": "user", "content": "hi"}]}).headers
        spilled = post(server)
        assert spilled.headers["x-laneway-deployment"] == "gpu"
        assert "spill:wafer=requests" in spilled.headers["x-laneway-route-reason"]
        time.sleep(1.2)
        back = post(server)
        assert back.headers["x-laneway-deployment"] == "wafer", back.headers["x-laneway-route-reason"]
