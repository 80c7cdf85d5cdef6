"""Breakers against a real simulator: a quota 429 is not a fault, and an open breaker whose
cooldown has passed reads half-open on /admin/policy and /metrics while nobody sends to it."""
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
    provider: openai
    model: sim-wafer
    base_url: {wafer}/v1
    hardware: wafer
    breaker: {{failures: 1, cooldown_s: 0.3}}
  - name: gpu
    provider: openai
    model: sim-gpu
    base_url: {gpu}/v1
    hardware: gpu
routes:
  - name: ordered
    candidates: [wafer, gpu]
"""


@pytest.fixture
def proxy(tmp_path):
    with simulator("instant") as wafer, simulator("instant") as gpu:
        with proxy_from_yaml(tmp_path, POLICY.format(wafer=wafer.url, gpu=gpu.url)) as server:
            server.wafer = wafer
            yield server


def send(proxy) -> httpx.Response:
    body = {"model": "ordered", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=10)


def inject(proxy, mode: str) -> None:
    httpx.post(proxy.wafer.url + "/sim/faults", json={"mode": mode, "count": 1}).raise_for_status()


def breaker(proxy) -> tuple[str, float]:
    """(state on /admin/policy, laneway_breaker_state on /metrics) of the wafer deployment."""
    state = httpx.get(proxy.url + "/admin/policy").json()["routing"]["breakers"]["wafer"]
    line = next(line for line in httpx.get(proxy.url + "/metrics").text.splitlines()
                if line.startswith('laneway_breaker_state{deployment="wafer"}'))
    return state, float(line.rsplit(" ", 1)[1])


def test_a_quota_429_falls_back_but_does_not_open_the_breaker(proxy):
    inject(proxy, "429")
    response = send(proxy)
    assert response.status_code == 200 and response.headers["x-laneway-route-reason"] == "fallback:wafer=429"
    assert breaker(proxy) == ("closed", 0.0), "one failure opens this breaker: a 429 must not count as one"


def test_an_open_breaker_reads_half_open_once_its_cooldown_passed_without_traffic(proxy):
    inject(proxy, "500")
    assert send(proxy).headers["x-laneway-route-reason"] == "fallback:wafer=500"
    assert breaker(proxy) == ("open", 2.0)
    time.sleep(0.4)  # past the 0.3 s cooldown, and no request comes to probe it
    assert breaker(proxy) == ("half_open", 1.0)
    assert send(proxy).headers["x-laneway-route-reason"] == "primary", "the next request is the probe and closes it"
    assert breaker(proxy) == ("closed", 0.0)


def test_a_half_open_probe_answered_429_gives_its_probe_slot_back(proxy):
    inject(proxy, "500")
    send(proxy)
    time.sleep(0.4)
    inject(proxy, "429")
    assert send(proxy).headers["x-laneway-route-reason"] == "fallback:wafer=429"
    assert breaker(proxy) == ("half_open", 1.0), "neither a success nor a fault"
    time.sleep(1.1)  # the 429's retry-after, until which routing spills the lane
    assert send(proxy).headers["x-laneway-route-reason"] == "primary", "the slot is free: the next request probes"
    assert breaker(proxy) == ("closed", 0.0)
