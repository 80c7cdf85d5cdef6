"""Idle probes end to end: a proxy with no client traffic sees a demoted lane recover, and bills the probe."""
from __future__ import annotations

import time

import httpx

from tests.support import proxy_from_yaml, record_outcomes, simulator

POLICY = """\
version: 1
auth: open
deployments:
  - name: wafer
    provider: openai
    model: sim-wafer
    base_url: {wafer}/v1
    hardware: wafer
    priors: {{ttft_ms: 20, tokens_per_s: 4000}}
    learning: {{idle_probe_s: 0.5}}
  - name: gpu
    provider: openai
    model: sim-gpu
    base_url: {gpu}/v1
    hardware: gpu
    priors: {{ttft_ms: 150, tokens_per_s: 400}}
routes:
  - name: codex
    strategy: latency
    candidates: [wafer, gpu]
"""


def post(server) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", timeout=10, json={
        "model": "codex", "max_tokens": 20, "stream": True, "messages": [{"role": "user", "content": "rename this"}]})


def test_a_lane_that_recovers_while_nobody_sends_is_back_for_the_next_request(tmp_path):
    with simulator("wafer", ttft_ms=5, tokens_per_s=4000) as wafer, simulator("gpu", ttft_ms=150, tokens_per_s=400) as gpu, \
            record_outcomes(proxy_from_yaml(tmp_path, POLICY.format(wafer=wafer.url, gpu=gpu.url))) as server:
        httpx.post(wafer.url + "/sim/faults", json={"mode": "slow_first_byte:1500", "count": 1}).raise_for_status()
        assert post(server).headers["x-laneway-deployment"] == "wafer"  # 1.5 s to its first token: demoted
        assert post(server).headers["x-laneway-deployment"] == "gpu"
        stopped = time.monotonic()  # no more client traffic; the wafer lane is fast again
        while not any(o.route == "laneway:probe" for o in server.outcomes) and time.monotonic() - stopped < 5:
            time.sleep(0.05)
        probes = [o for o in server.outcomes if o.route == "laneway:probe"]
        assert len(probes) == 1, "one probe, within idle_probe_s and a tick"
        (probe,) = probes
        assert (probe.deployment, probe.status, probe.key_name) == ("wafer", 200, "laneway-probe")
        assert probe.usage_reported and probe.input_tokens > 0 and probe.output_tokens == 1  # what the ledger bills
        back = post(server)
        assert (back.headers["x-laneway-deployment"], back.headers["x-laneway-route-reason"]) == ("wafer", "latency")
        assert httpx.get(server.url + "/admin/policy").json()["routing"]["counters"]["probes"] == 1
