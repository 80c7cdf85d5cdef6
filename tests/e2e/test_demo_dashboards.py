"""The demo as an operator runs it (policies/demo.yaml, its simulators' own settings), scraped by a
real Prometheus: every dashboard panel the demo exercises has data after one pass of load, and
the fast lane's exhaustion shows the way its Cerebras-dialect provider really reports it (a
per-minute request limit it enforces but never states: only its 429s tell).

One pass is enough because a policy's route series exist at zero from load: rate() sees the
first request and the first WebSocket turn of each.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import httpx
import openai
import pytest
import websockets.sync.client as ws_client
import yaml

from tests.e2e.test_dashboards import ALL, Prometheus, alert_rules, panel_queries, substitute
from tests.support import ServerThread, proxy_from_yaml, simulator

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "policies" / "demo.yaml"
MSGS = [{"role": "user", "content": "hello"}]
# Panels the demo's policy gives nothing to show: no prices, budgets, limits, Redis, hedges or
# breakers opening. Every other panel must have data (counters created at zero count as data).
NOT_EXERCISED = {
    "cost.json / Spend (USD/hour) by team", "cost.json / Spend by deployment and pricing status",
    "cost.json / Provisional share of spend", "cost.json / Budget used (share of hard limit)",
    "lanes.json / Hedges by winner", "lanes.json / Routed past an open breaker",
    "limits.json / Limiter rejections by scope",
    "limits.json / Reservation error (tokens per request)",
    "overview.json / Redis round trip (p50 / p99)",
}


def demo_simulator(spec: dict) -> ServerThread:
    """One of the demo's simulators with the settings its policy gives it, on a free port."""
    return simulator(spec["profile"], **{k: spec[k] for k in ("rpm", "tpm", "rpd", "dialect") if k in spec})


def drive_demo_load(base: str) -> None:
    """The codex route past the fast lane's 30 requests a minute, the other routes, a WebSocket turn,
    and a request for a model that does not exist (refused before routing)."""
    client = openai.OpenAI(base_url=base + "/v1", api_key="demo", max_retries=0)
    for _ in range(33):
        stream = client.chat.completions.create(model="codex", messages=MSGS, max_tokens=4, stream=True,
                                                stream_options={"include_usage": True})
        assert [c for c in stream if c.usage]
    for model in ("deep", "fast"):
        httpx.post(base + "/v1/chat/completions", timeout=30,
                   json={"model": model, "messages": MSGS, "max_tokens": 4, "stream": True})
    assert httpx.post(base + "/v1/chat/completions", json={"model": "made-up", "messages": MSGS}).status_code == 404
    with ws_client.connect(base.replace("http://", "ws://") + "/v1/responses") as ws:
        ws.send(json.dumps({"type": "response.create", "model": "codex", "input": "hi", "max_output_tokens": 4}))
        while (event := json.loads(ws.recv(timeout=30)))["type"] not in ("response.completed", "error"):
            pass
        assert event["type"] == "response.completed", event


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    policy = yaml.safe_load(DEMO.read_text())
    sims = {spec["port"]: demo_simulator(spec) for spec in policy.pop("simulators")}  # started here, on free ports
    for sim in sims.values():
        sim.__enter__()
    try:
        for dep in policy["deployments"]:
            for port, sim in sims.items():
                dep["base_url"] = dep["base_url"].replace(f"http://127.0.0.1:{port}", sim.url)
        with proxy_from_yaml(tmp, yaml.safe_dump(policy, sort_keys=False)) as proxy:
            prom = Prometheus(tmp, f"127.0.0.1:{proxy.port}")
            try:
                prom.wait_ready()
                # The zeros a policy load creates, scraped before any traffic.
                prom.wait_for('laneway_requests_total{route="codex", transport="websocket"} == 0')
                drive_demo_load(proxy.url)
                prom.wait_for('increase(laneway_requests_total{transport="websocket"}[1m]) > 0')
                time.sleep(1.5)
                yield prom
            finally:
                prom.stop()
    finally:
        for sim in sims.values():
            sim.__exit__(None, None, None)


def test_every_panel_the_demo_exercises_has_data_after_one_pass(demo):
    shown: dict[str, bool] = {}  # a panel has data when any of its queries returns a real value
    for dashboard, title, expr in panel_queries():
        result = demo.query(substitute(expr, ALL))["result"]
        panel = f"{dashboard} / {title}"
        shown[panel] = shown.get(panel, False) or any(not math.isnan(float(s["value"][1])) for s in result)
    empty = {panel for panel, data in shown.items() if not data}
    # Only one way round: the registry is shared by every proxy this test process runs, so a
    # panel listed here may show another test's series.
    assert not empty - NOT_EXERCISED, f"panels the demo exercises with no data: {sorted(empty - NOT_EXERCISED)}"


def test_the_fast_lane_near_exhaustion_shows_from_its_429s(demo):
    [rule] = [r for r in alert_rules() if r["alert"] == "LanewayFastLaneNearExhaustion"]
    firing = {(s["metric"]["deployment"], s["metric"]["window"]) for s in demo.query(rule["expr"])["result"]}
    assert ("spark-wafer", "unstated") in firing, firing


def test_the_provider_windows_it_states_carry_one_unit_each(demo):
    series = demo.query('laneway_ratelimit_limit{deployment="spark-wafer", source="provider"}')["result"]
    units = {s["metric"]["window"]: s["metric"]["unit"] for s in series}
    assert units and all(unit == ("tokens" if "token" in window else "requests") for window, unit in units.items()), units


def test_lane_panels_show_no_placeholder_lane(demo):
    lanes = [s["metric"].get("lane") for _, title, expr in panel_queries() if title == "Share of traffic by lane"
             for s in demo.query(substitute(expr, ALL))["result"]]
    assert set(lanes) == {"wafer", "gpu"}, lanes


def test_gpu_lane_ttft_median_reads_its_mean(demo):
    """The GPU lane's ~400 ms first token sits mid-bucket: the interpolated p50 is its real value."""
    where = '{lane="gpu", transport="http"}[5m]'
    mean = demo.query(f"sum(rate(laneway_time_to_first_token_seconds_sum{where})) / "
                      f"sum(rate(laneway_time_to_first_token_seconds_count{where}))")["result"]
    p50 = demo.query(f"histogram_quantile(0.5, sum by (le) (rate(laneway_time_to_first_token_seconds_bucket{where})))")
    mean_s, p50_s = float(mean[0]["value"][1]), float(p50["result"][0]["value"][1])
    assert p50_s == pytest.approx(mean_s, rel=0.06), (p50_s, mean_s)
