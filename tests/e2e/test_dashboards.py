"""Every shipped PromQL expression against a real Prometheus scraping a real Laneway under load.

A Prometheus (the Debian `prometheus` package; `make system-deps` installs it) scrapes the
proxy every second while a bounded load runs through both lanes with a fallback, a spill,
a hedge, a 429 and a WebSocket turn. Then every dashboard panel query must parse and return
at least one real (non-NaN) value, every template variable must list real values, and
every alert rule must parse and load with health "ok".
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import websockets.sync.client as ws_client
import yaml

from tests.redis_support import RedisServer
from tests.support import free_port, proxy_from_yaml, simulator

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
KEY = "lw-dashboard-test-key"
TIGHT_KEY = "lw-dashboard-tight-key"  # a key with its own small limit: Laneway's limiter answers 429
MSGS = [{"role": "user", "content": "hello"}]
# What Grafana puts in place of the template variables when "All" is selected.
ALL = {"$route": ".*", "$deployment": ".*", "$__rate_interval": "1m", "$__range": "5m"}

POLICY = """\
version: 1
auth: keys
store: {{redis_url: "{redis}", timeout_ms: 500}}
keys:
  - name: dash
    sha256: {sha}
    team: platform
  - name: tight
    sha256: {tight_sha}
    team: research
    limits: {{rpm: 2}}
team_budgets:
  platform: {{daily_soft_usd: 50, daily_hard_usd: 100, monthly_hard_usd: 1000}}
prices:
  sim-spark:
    - {{effective_from: 2020-01-01, input_per_mtok: 0.6, output_per_mtok: 1.2, status: provisional}}
  sim-codex:
    - {{effective_from: 2020-01-01, input_per_mtok: 1.25, output_per_mtok: 10, status: announced}}
deployments:
  - name: spark-wafer
    provider: cerebras
    model: sim-spark
    base_url: {wafer}/v1
    hardware: wafer
    limits: {{rpm: 1000, tpm: 1000000}}
    websocket: true      # Responses turns run over Laneway's own sockets to the provider
  - name: quota-wafer
    provider: cerebras
    model: sim-spark
    base_url: {quota}/v1
    hardware: wafer
  - name: codex-gpu
    provider: openai
    model: sim-codex
    base_url: {gpu}/v1
    hardware: gpu
  - name: dead
    provider: openai
    model: nothing
    base_url: http://127.0.0.1:{dead_port}/v1
    timeouts: {{connect_s: 0.5}}
    breaker: {{failures: 1, cooldown_s: 600}}
routes:
  - name: codex
    strategy: fallback
    candidates: [spark-wafer, codex-gpu]
  - name: fast
    strategy: fallback
    candidates: [spark-wafer]
  - name: deep
    strategy: fallback
    candidates: [codex-gpu]
  - name: quota
    strategy: fallback
    candidates: [quota-wafer, codex-gpu]
  - name: dead-then-gpu
    strategy: fallback
    candidates: [dead, codex-gpu]
  - name: hedged
    strategy: fallback
    candidates: [spark-wafer, codex-gpu]
    hedge: {{after_ms: 40}}
"""


def panel_queries() -> Iterator[tuple[str, str, str]]:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                yield path.name, panel["title"], target["expr"]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


class Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("the `prometheus` binary is missing: run `make system-deps` (Debian package `prometheus`)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shutil.copy(ALERTS, tmp / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "alerts.yml")],
            "scrape_configs": [{"job_name": "laneway", "static_configs": [{"targets": [target]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited: {self.proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "prometheus not ready within 30 s"
            time.sleep(0.1)

    def query(self, expr: str) -> dict:
        body = httpx.get(self.url + "/api/v1/query", params={"query": expr}).json()
        assert body["status"] == "success", f"{expr}\n -> {body.get('error')}"
        return body["data"]

    def wait_for(self, expr: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.query(expr)["result"]:
            assert time.monotonic() < deadline, f"no data for {expr} within {timeout} s"
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def drive_load(base: str, wafer: str, quota_sim_url: str) -> None:
    """Both lanes, HTTP and WebSocket, a fallback, a spill, a hedge and a client-visible 429."""
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
    for model in ("codex", "codex", "deep", "deep"):
        stream = client.chat.completions.create(model=model, messages=MSGS, max_tokens=24, stream=True,
                                                stream_options={"include_usage": True})
        assert [c for c in stream if c.usage]
    client.chat.completions.create(model="codex", messages=MSGS, max_tokens=4)
    headers = {"authorization": f"Bearer {KEY}"}

    def post(model: str, max_tokens: int = 4) -> httpx.Response:
        return httpx.post(base + "/v1/chat/completions", headers=headers,
                          json={"model": model, "messages": MSGS, "max_tokens": max_tokens, "stream": True})

    httpx.post(wafer + "/sim/faults", json={"mode": "slow_first_byte:400", "count": 1}).raise_for_status()
    assert post("hedged").headers["x-laneway-route-reason"] == "primary;hedge-won"
    # A client WebSocket turn, run over Laneway's own socket to the wafer provider.
    with ws_client.connect(base.replace("http://", "ws://") + "/v1/responses",
                           additional_headers={"authorization": f"Bearer {KEY}"}) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "codex", "input": "hi", "max_output_tokens": 8}))
        while (event := json.loads(ws.recv(timeout=10)))["type"] not in ("response.completed", "error"):
            pass
        assert event["type"] == "response.completed", event
    httpx.post(wafer + "/sim/faults", json={"mode": "429", "count": 1}).raise_for_status()
    assert post("codex").headers["x-laneway-route-reason"] == "fallback:spark-wafer=429"
    time.sleep(1.1)  # the 429's retry-after: until then the limiter itself refuses spark-wafer
    httpx.post(wafer + "/sim/faults", json={"mode": "429", "count": 1}).raise_for_status()
    assert post("fast").status_code == 429
    assert httpx.post(wafer + "/sim/faults", json={"mode": "429", "count": 0}).json()["queued"] == 0, "the upstream answered it"
    # The first call fails to connect and opens dead's breaker; later ones route around it.
    dead = [post("dead-then-gpu").headers["x-laneway-route-reason"] for _ in range(2)]
    assert dead[-1] == "primary;breaker:dead=open", dead
    tight = [httpx.post(base + "/v1/chat/completions", headers={"authorization": f"Bearer {TIGHT_KEY}"},
                        json={"model": "deep", "messages": MSGS, "max_tokens": 4}) for _ in range(3)]
    assert tight[-1].status_code == 429 and tight[-1].json()["error"]["code"] == "rate_limit_exceeded", tight[-1].text
    reasons = [post("quota").headers["x-laneway-route-reason"] for _ in range(4)]
    assert "primary;spill:quota-wafer=requests" in reasons, reasons
    assert httpx.get(quota_sim_url + "/sim/stats").json()["rate_limited"] == 0, "the spill should have avoided a 429"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A Prometheus that has scraped the proxy through the whole load; yields it."""
    tmp = tmp_path_factory.mktemp("prometheus")
    with RedisServer() as redis, \
            simulator("wafer", ttft_ms=5, tokens_per_s=3000, rpm=1000) as wafer, \
            simulator("gpu", ttft_ms=20, tokens_per_s=2000) as gpu, \
            simulator("wafer", ttft_ms=5, tokens_per_s=3000, rpm=3) as quota:
        text = POLICY.format(sha=hashlib.sha256(KEY.encode()).hexdigest(), tight_sha=hashlib.sha256(TIGHT_KEY.encode()).hexdigest(), wafer=wafer.url, gpu=gpu.url, quota=quota.url,
                             dead_port=free_port(), redis=redis.url)
        with proxy_from_yaml(tmp, text) as proxy:
            prom = Prometheus(tmp, f"127.0.0.1:{proxy.port}")
            try:
                prom.wait_ready()
                prom.wait_for('up{job="laneway"} == 1')
                # rate() needs a series to grow between two scrapes: the first pass creates every
                # series, the second makes them move, as steady production traffic would.
                drive_load(proxy.url, wafer.url, quota.url)
                prom.wait_for('laneway_websocket_events_total{kind="turn"} > 0')
                time.sleep(2)
                drive_load(proxy.url, wafer.url, quota.url)
                prom.wait_for('increase(laneway_websocket_events_total{kind="turn"}[1m]) > 0')
                time.sleep(2)
                yield prom
            finally:
                prom.stop()


def test_dashboards_ship_and_have_template_variables():
    assert {p.stem for p in DASHBOARDS} == {"overview", "lanes", "limits", "cost", "websockets"}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        names = {v["name"] for v in dashboard["templating"]["list"]}
        assert names == {"deployment", "route"}, path.name
        assert dashboard["uid"].startswith("laneway-") and dashboard["panels"], path.name
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "laneway-prometheus", (path.name, panel["title"])


def test_every_panel_query_returns_data(loaded):
    empty = []
    for dashboard, title, expr in panel_queries():
        result = loaded.query(substitute(expr, ALL))["result"]
        if not any(not math.isnan(float(series["value"][1])) for series in result):
            empty.append(f"{dashboard} / {title}: {expr}")
    assert not empty, "panels with no data:\n" + "\n".join(empty)


def test_the_load_moved_every_counter_the_panels_show(loaded):
    """Panels returning zeros would pass the test above; the features really happened."""
    for expr in ('laneway_spills_total{reason="requests"}', 'laneway_fallbacks_total{reason="429"}',
                 'laneway_fallbacks_total{reason="connect"}', 'laneway_hedges_total{winner="hedge"}',
                 'laneway_breaker_skips_total', 'laneway_breaker_state{deployment="dead"} == 2',
                 'laneway_requests_total{status="429"}', 'laneway_requests_total{lane="wafer"}',
                 'laneway_requests_total{lane="gpu"}', 'laneway_websocket_events_total{kind="turn"}',
                 'laneway_upstream_websocket_events_total{kind="turn"}', 'laneway_ratelimit_rejections_total{scope="client"}',
                 'laneway_cost_usd_total{pricing_status="provisional"}', 'laneway_cost_usd_total{pricing_status="announced"}',
                 'laneway_redis_ping_seconds_count', 'laneway_reservations_settled_total', 'laneway_budget_spent_usd',
                 'laneway_ratelimit_remaining{source="provider"}', 'laneway_ratelimit_remaining{source="laneway"}'):
        values = [float(series["value"][1]) for series in loaded.query(expr)["result"]]
        assert values and max(values) > 0, (expr, loaded.query(expr)["result"])


def test_panel_queries_parse_with_a_single_selected_value(loaded):
    one = {"$route": "codex", "$deployment": "spark-wafer", "$__rate_interval": "1m", "$__range": "5m"}
    for _, _, expr in panel_queries():
        loaded.query(substitute(expr, one))  # asserts status == success


def test_template_variables_list_the_configured_names(loaded):
    expected = {"deployment": {"spark-wafer", "codex-gpu", "quota-wafer"},
                "route": {"codex", "deep", "fast", "quota", "dead-then-gpu", "hedged"}}
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]).groups()
            values = httpx.get(f"{loaded.url}/api/v1/label/{label}/values", params={"match[]": metric}).json()["data"]
            assert expected[variable["name"]] <= set(values), (path.name, variable["name"], values)


def test_every_alert_rule_parses_and_loads(loaded):
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {"LanewayFastLaneNearExhaustion", "LanewayClient429Rate", "LanewayBreakerOpen",
                                           "LanewayAddedLatencyHigh", "LanewayRedisErrors", "LanewayPolicyReloadFailed"}
    for rule in rules:
        loaded.query(rule["expr"])
    loaded_rules = [r for g in httpx.get(loaded.url + "/api/v1/rules").json()["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in loaded_rules} == {r["alert"] for r in rules}
    assert all(r["health"] == "ok" for r in loaded_rules), [(r["name"], r.get("lastError")) for r in loaded_rules]
