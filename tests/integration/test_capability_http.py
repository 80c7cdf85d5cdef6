"""Capability-aware routing end to end: skip what a lane cannot take; a 400 when nothing can."""
from __future__ import annotations

import httpx

from tests.support import proxy_from_yaml

POLICY = """\
version: 1
auth: open
deployments:
  - name: fast
    provider: cerebras
    model: sim-wafer
    base_url: {wafer}/v1
    hardware: wafer
    context_window: 2000
    modalities: [text]
  - name: deep
    provider: openai
    model: sim-gpu
    base_url: {gpu}/v1
    hardware: gpu
    context_window: 8000
    modalities: [text, image]
routes:
  - name: codex
    strategy: latency
    candidates: [fast, deep]
"""


def test_requests_go_where_they_fit_and_a_400_says_why_when_nowhere(tmp_path, wafer_sim, gpu_sim):
    with proxy_from_yaml(tmp_path, POLICY.format(wafer=wafer_sim.url, gpu=gpu_sim.url)) as server:
        def post(content, max_tokens=10):
            return httpx.post(server.url + "/v1/chat/completions", timeout=10, json={
                "model": "codex", "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]})

        assert post("hello").headers["x-laneway-deployment"] == "fast"
        long = post("x" * 12_000)
        assert long.status_code == 200 and long.headers["x-laneway-deployment"] == "deep"
        assert long.headers["x-laneway-route-reason"] == "latency;capability:fast=context"
        image = post([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
        assert image.status_code == 200 and image.headers["x-laneway-route-reason"] == "latency;capability:fast=image"
        before = httpx.get(gpu_sim.url + "/sim/stats").json()["requests"]
        refused = post("x" * 40_000)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == ("invalid_request_error", "unsupported_request")
        assert "fast takes 2000 tokens" in error["message"] and "deep takes 8000 tokens" in error["message"]
        assert httpx.get(gpu_sim.url + "/sim/stats").json()["requests"] == before, "nothing was sent"
