"""Routing end to end: real simulators, a real proxy, the openai SDK and raw HTTP."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.support import free_port, proxy_from_yaml, simulator

MESSAGES = [{"role": "user", "content": "refactor this function"}]

POLICY = """\
version: 1
auth: open
deployments:
  - name: wafer
    provider: openai
    model: sim-wafer
    base_url: {wafer}/v1
    hardware: wafer
    priors: {{ttft_ms: 60, tokens_per_s: 1500}}
    timeouts: {{connect_s: 1, first_byte_s: 5, idle_s: 2}}
  - name: gpu
    provider: openai
    model: sim-gpu
    base_url: {gpu}/v1
    hardware: gpu
    priors: {{ttft_ms: 400, tokens_per_s: 80}}
  - name: dead
    provider: openai
    model: nothing
    base_url: http://127.0.0.1:{dead_port}/v1
    hardware: wafer
    priors: {{ttft_ms: 1, tokens_per_s: 100000}}
    timeouts: {{connect_s: 0.5}}
    breaker: {{failures: 2, cooldown_s: 0.4}}
prices:
  sim-wafer:
    - {{effective_from: 2026-01-01, input_per_mtok: 1.0, output_per_mtok: 4.0, status: announced}}
  sim-gpu:
    - {{effective_from: 2026-01-01, input_per_mtok: 0.5, output_per_mtok: 2.0, status: announced}}
routes:
  - name: codex
    strategy: latency
    candidates: [wafer, gpu]
  - name: hedged
    strategy: fallback
    candidates: [wafer, gpu]
    hedge: {{after_ms: 150}}
  - name: ordered
    candidates: [wafer, gpu]
  - name: flaky
    strategy: latency
    candidates: [dead, gpu]
"""


@pytest.fixture
def lanes():
    """A wafer lane with a tiny per-minute quota (OpenAI-style headers) and a GPU lane without one."""
    with simulator("wafer", ttft_ms=5, tokens_per_s=4000, rpm=3) as wafer, simulator("gpu", ttft_ms=20, tokens_per_s=2000) as gpu:
        yield wafer, gpu


@pytest.fixture
def proxy(tmp_path, lanes):
    wafer, gpu = lanes
    server = proxy_from_yaml(tmp_path, POLICY.format(wafer=wafer.url, gpu=gpu.url, dead_port=free_port()))
    with server:
        yield server


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def stats(sim) -> dict:
    return httpx.get(sim.url + "/sim/stats").json()


def inject(sim, mode: str, count: int = 1) -> None:
    httpx.post(sim.url + "/sim/faults", json={"mode": mode, "count": count}).raise_for_status()


def chat(server, model: str = "codex", headers: dict | None = None, **extra) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 8, **extra}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=10)


def outcomes(server) -> list:
    seen: list = []
    server.app.state.observers.append(seen.append)
    return seen


def test_spills_to_the_gpu_lane_before_the_wafer_lane_answers_429(proxy, lanes):
    wafer, gpu = lanes
    served = []
    for _ in range(6):
        response = chat(proxy)
        assert response.status_code == 200
        served.append((response.headers["x-laneway-deployment"], response.headers["x-laneway-route-reason"]))
    assert [d for d, _ in served] == ["wafer"] * 3 + ["gpu"] * 3
    assert served[3][1] == "latency;spill:wafer=requests"
    assert stats(wafer)["rate_limited"] == 0, "the wafer lane never had to refuse a request"
    assert proxy.app.state.routing.counters.spills == 3


def test_every_response_says_where_and_why(proxy):
    raw = sdk(proxy).chat.completions.with_raw_response.create(model="codex", messages=MESSAGES, max_tokens=4)
    assert raw.headers["x-laneway-deployment"] == "wafer"
    assert raw.headers["x-laneway-lane"] == "wafer"
    assert raw.headers["x-laneway-route-reason"] == "latency"


def test_lane_hint_and_bad_hints(proxy):
    response = chat(proxy, headers={"x-laneway-lane": "deep"})
    assert response.headers["x-laneway-deployment"] == "gpu"
    assert response.headers["x-laneway-route-reason"] == "latency;hint:lane=gpu"
    bad = chat(proxy, headers={"x-laneway-max-latency-ms": "fast please"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "x-laneway-max-latency-ms"
    # ~30 prompt tokens + 8 output: ~$0.00006 on the wafer lane, ~$0.00003 on the GPU lane.
    cheap = chat(proxy, headers={"x-laneway-max-cost-usd": "0.000045"})
    assert cheap.status_code == 200 and cheap.headers["x-laneway-deployment"] == "gpu"
    assert chat(proxy, headers={"x-laneway-max-cost-usd": "1"}).headers["x-laneway-deployment"] == "wafer"
    refused = chat(proxy, headers={"x-laneway-max-cost-usd": "0.000001"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "max_cost_exceeded"


def test_fallback_before_the_first_byte_but_never_after(proxy, lanes):
    wafer, gpu = lanes
    inject(wafer, "503")
    chunks = list(sdk(proxy).chat.completions.create(model="ordered", messages=MESSAGES, max_tokens=20, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert stats(gpu)["requests"] == 1
    # Once the stream started, a drop is the client's to see: the GPU lane is not asked again.
    inject(wafer, "drop_mid_stream")
    with pytest.raises(openai.APIError):
        for _ in sdk(proxy).chat.completions.create(model="ordered", messages=MESSAGES, max_tokens=40, stream=True):
            pass
    assert stats(gpu)["requests"] == 1


def test_breaker_opens_skips_and_probes_again(proxy, lanes):
    _, gpu = lanes
    reasons = [chat(proxy, "flaky").headers["x-laneway-route-reason"] for _ in range(3)]
    assert reasons[:2] == ["fallback:dead=connect"] * 2
    assert reasons[2] == "latency;breaker:dead=open", "open after 2 failures: not even tried"
    states = httpx.get(proxy.url + "/admin/policy").json()["routing"]["breakers"]
    assert states["dead"] == "open"
    time.sleep(0.45)
    assert chat(proxy, "flaky").headers["x-laneway-route-reason"] == "fallback:dead=connect", "half-open probe"
    assert chat(proxy, "flaky").headers["x-laneway-route-reason"] == "latency;breaker:dead=open"
    assert stats(gpu)["requests"] == 5


def test_hedge_first_token_wins_and_the_loser_is_accounted(proxy, lanes):
    wafer, gpu = lanes
    seen = outcomes(proxy)
    inject(wafer, "slow_first_byte:3000")
    started = time.perf_counter()
    raw = sdk(proxy).chat.completions.with_raw_response.create(model="hedged", messages=MESSAGES, max_tokens=30, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert time.perf_counter() - started < 2.0
    assert text and raw.headers["x-laneway-deployment"] == "gpu"
    assert raw.headers["x-laneway-route-reason"] == "primary;hedge-won"
    counters = proxy.app.state.routing.counters
    assert (counters.hedges_started, counters.hedges_won) == (1, 1)
    deadline = time.monotonic() + 3
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    by_deployment = {o.deployment: o for o in seen}
    loser, winner = by_deployment["wafer"], by_deployment["gpu"]
    assert (loser.status, loser.error_code, loser.reason) == (499, "hedge_lost", "hedge-lost")
    # the wafer never answered (a stall before its headers): never admitted, so billed nothing
    assert (loser.input_tokens, loser.output_tokens, loser.usage_reported) == (0, 0, False)
    assert loser.request_id == winner.request_id
    assert winner.status == 200 and winner.output_tokens == 30
    assert proxy.app.state.routing.stats.get("wafer").in_flight == 0
    # The loser was cut off upstream, not left generating.
    deadline = time.monotonic() + 3
    while stats(wafer)["output_tokens"] == 0 and stats(wafer)["disconnects"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(wafer)["output_tokens"] == 0


def test_hedge_not_started_when_the_first_candidate_is_quick(proxy, lanes):
    _, gpu = lanes
    response = chat(proxy, "hedged", stream=True)
    assert response.headers["x-laneway-deployment"] == "wafer"
    assert response.headers["x-laneway-route-reason"] == "primary"
    assert "[DONE]" in response.text
    assert proxy.app.state.routing.counters.hedges_started == 0
    assert stats(gpu)["requests"] == 0


def test_hedged_route_still_falls_back_before_the_first_token(proxy, lanes):
    wafer, _ = lanes
    inject(wafer, "500")
    response = chat(proxy, "hedged")
    assert response.status_code == 200 and response.headers["x-laneway-deployment"] == "gpu"
    assert response.headers["x-laneway-route-reason"] == "fallback:wafer=500"


def test_latency_statistics_are_learnt_from_streams(proxy):
    for _ in range(2):
        assert "[DONE]" in chat(proxy, "codex", stream=True, max_tokens=50).text
    deployments = httpx.get(proxy.url + "/admin/policy").json()["routing"]["deployments"]
    wafer = deployments["wafer"]
    assert wafer["requests"] == 2 and wafer["in_flight"] == 0
    assert wafer["ttft_ms_ewma"] is not None and wafer["ttft_ms_ewma"] < 1000
    assert wafer["tokens_per_s_ewma"] > 100


def test_hedge_the_first_attempt_can_still_win_and_the_hedge_is_cancelled(proxy, lanes):
    wafer, gpu = lanes
    seen = outcomes(proxy)
    inject(wafer, "slow_first_byte:400")
    inject(gpu, "slow_first_byte:3000")
    response = chat(proxy, "hedged", stream=True)
    assert response.headers["x-laneway-deployment"] == "wafer"
    assert response.headers["x-laneway-route-reason"] == "primary;hedged"
    counters = proxy.app.state.routing.counters
    assert (counters.hedges_started, counters.hedges_won) == (1, 0)
    lost = [o for o in seen if o.error_code == "hedge_lost"]
    assert [o.deployment for o in lost] == ["gpu"]
    time.sleep(0.3)
    assert stats(gpu)["output_tokens"] == 0


def test_hedge_for_a_non_streaming_request(proxy, lanes):
    wafer, _ = lanes
    inject(wafer, "slow_first_byte:3000")
    started = time.perf_counter()
    response = chat(proxy, "hedged", max_tokens=5)
    assert time.perf_counter() - started < 2.0
    assert response.status_code == 200 and response.headers["x-laneway-deployment"] == "gpu"
    assert response.json()["usage"]["completion_tokens"] == 5


def test_a_stream_kept_waiting_for_its_first_token_moves_the_next_request_off_the_lane(tmp_path):
    """The wafer lane slowed down (first token after 2.5 s) before any answer told routing so:
    the next request, sent while the first still waits, goes to the GPU lane."""
    import threading
    with simulator("wafer", ttft_ms=2500, tokens_per_s=4000) as wafer, simulator("gpu", ttft_ms=20, tokens_per_s=2000) as gpu, \
            proxy_from_yaml(tmp_path, POLICY.format(wafer=wafer.url, gpu=gpu.url, dead_port=free_port())) as proxy:
        first: dict[str, str] = {}

        def waiting_stream() -> None:
            with httpx.stream("POST", proxy.url + "/v1/chat/completions", timeout=10,
                              json={"model": "codex", "messages": MESSAGES, "max_tokens": 3, "stream": True}) as response:
                first["deployment"] = response.headers["x-laneway-deployment"]
                response.read()
        thread = threading.Thread(target=waiting_stream)
        thread.start()
        time.sleep(0.8)  # the first stream has waited 0.8 s: longer than the GPU lane's 400 ms prior
        second = httpx.post(proxy.url + "/v1/chat/completions", timeout=10,
                            json={"model": "codex", "messages": MESSAGES, "max_tokens": 3, "stream": True})
        thread.join(timeout=10)
    assert first["deployment"] == "wafer"  # nothing told routing yet: its priors say fast
    assert second.headers["x-laneway-deployment"] == "gpu"
