"""/metrics as Prometheus scrapes it: request counts, latency histograms, tokens, route reasons.

The proxy runs in this process (one registry shared by every test proxy), so each test
reads the counters before and after its own traffic and checks the difference.
"""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.call import Outcome
from proxy.config import load_policy
from proxy.metrics import families
from proxy.metrics.observer import RequestMetrics, status_label
from proxy.metrics.redis_probe import RedisProbe
from tests.redis_support import RedisServer
from tests.support import proxy_from_yaml

MSGS = [{"role": "user", "content": "hello"}]


def scrape(base: str) -> dict[tuple[str, frozenset], float]:
    """Every sample on /metrics keyed by (name, labels)."""
    response = httpx.get(base + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= lbl)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def test_requests_latency_and_tokens_by_route_deployment_lane(proxy):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x")
    before = scrape(proxy.url)
    out_tokens = 0
    for _ in range(3):
        stream = client.chat.completions.create(model="codex", messages=MSGS, max_tokens=12, stream=True,
                                                stream_options={"include_usage": True})
        out_tokens += [c for c in stream if c.usage][0].usage.completion_tokens
    done = client.chat.completions.create(model="codex-gpu", messages=MSGS, max_tokens=5)
    after = scrape(proxy.url)

    labels = dict(route="codex", deployment="spark-wafer", lane="wafer", transport="http")
    assert delta(before, after, "laneway_requests_total", status="200", endpoint="chat", **labels) == 3
    assert delta(before, after, "laneway_requests_total", route="codex-gpu", deployment="codex-gpu", lane="gpu", status="200") == 1
    assert delta(before, after, "laneway_time_to_first_token_seconds_count", **labels) == 3
    assert delta(before, after, "laneway_request_duration_seconds_count", **labels) == 3
    assert delta(before, after, "laneway_decode_tokens_per_second_count", deployment="spark-wafer") == 3
    assert delta(before, after, "laneway_tokens_total", deployment="spark-wafer", kind="output") == out_tokens
    assert delta(before, after, "laneway_tokens_total", deployment="codex-gpu", kind="output") == done.usage.completion_tokens
    assert delta(before, after, "laneway_added_latency_seconds_count", transport="http", attempt="first") == 4
    # The proxy's own part is far below the request's duration and below 25 ms on loopback.
    added = delta(before, after, "laneway_added_latency_seconds_sum")
    assert 0 < added / 4 < 0.025
    ttft_sum = delta(before, after, "laneway_time_to_first_token_seconds_sum", **labels)
    assert 0.005 <= ttft_sum / 3 < 1.0  # the wafer simulator's TTFT is 5 ms


def test_fallbacks_and_429_are_counted_with_bounded_labels(proxy, wafer_sim):
    before = scrape(proxy.url)
    httpx.post(wafer_sim.url + "/sim/faults", json={"mode": "429", "count": 1}).raise_for_status()
    spilled = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "codex", "messages": MSGS, "max_tokens": 3})
    assert spilled.headers["x-laneway-route-reason"] == "fallback:spark-wafer=429"
    httpx.post(wafer_sim.url + "/sim/faults", json={"mode": "429", "count": 1}).raise_for_status()
    limited = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "fast", "messages": MSGS, "max_tokens": 3})
    assert limited.status_code == 429
    connect = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "dead-then-gpu", "messages": MSGS, "max_tokens": 3})
    assert connect.status_code == 200
    unknown = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "no-such-model-x1", "messages": MSGS})
    assert unknown.status_code == 404
    after = scrape(proxy.url)

    assert delta(before, after, "laneway_fallbacks_total", route="codex", deployment="spark-wafer", reason="429") == 1
    assert delta(before, after, "laneway_fallbacks_total", route="dead-then-gpu", deployment="dead", reason="connect") == 1
    assert delta(before, after, "laneway_added_latency_seconds_count", attempt="fallback") == 2
    assert delta(before, after, "laneway_requests_total", route="fast", deployment="spark-wafer", status="429") == 1
    assert delta(before, after, "laneway_requests_total", route="none", deployment="none", status="404") == 1
    # A client's made-up model name never becomes a label value.
    assert not any("no-such-model-x1" in value for _, lbl in after for _, value in lbl)


def test_status_labels_are_a_small_fixed_set():
    assert [status_label(s) for s in (200, 429, 499, 502, 201, 418, 999)] == ["200", "429", "499", "502", "2xx", "4xx", "other"]


def sample(name: str, **labels: str) -> float:
    return families.REGISTRY.get_sample_value(name, labels) or 0.0


def finished(**fields) -> Outcome:
    base = dict(request_id="r", endpoint="chat", route="codex", key_name="k", team="platform", deployment="codex-gpu",
                hardware="gpu", reason="primary", status=200, stream=True, input_tokens=10, output_tokens=41,
                started=100.0, upstream_started=100.0004, first_token_at=100.4, finished=100.9)
    return Outcome(**{**base, **fields})


def test_route_reasons_become_bounded_counters_and_hedge_losers_only_spend_tokens():
    observe = RequestMetrics(lambda: {"spark-wafer", "codex-gpu"})
    before = {
        "limited": sample("laneway_spills_total", route="codex", deployment="spark-wafer", reason="limited"),
        "spill": sample("laneway_spills_total", route="codex", deployment="spark-wafer", reason="tokens"),
        "breaker": sample("laneway_breaker_skips_total", route="codex", deployment="spark-wafer"),
        "hedge": sample("laneway_hedges_total", route="codex", winner="hedge"),
        "fallback": sample("laneway_fallbacks_total", route="codex", deployment="spark-wafer", reason="5xx"),
        "requests": sample("laneway_requests_total", route="codex", deployment="codex-gpu", lane="gpu", status="200",
                           transport="http", endpoint="chat"),
        "tokens": sample("laneway_tokens_total", route="codex", deployment="codex-gpu", lane="gpu", team="platform", kind="output"),
        "decode": sample("laneway_decode_tokens_per_second_sum", route="codex", deployment="codex-gpu", lane="gpu"),
    }
    observe(finished(reason="fallback:spark-wafer=limited"))
    observe(finished(reason="fallback:spark-wafer=503,made-up=429"))
    observe(finished(reason="latency;spill:spark-wafer=tokens;breaker:spark-wafer=open;hedge-won"))
    observe(finished(reason="hedge-lost", status=499, output_tokens=5))
    assert sample("laneway_spills_total", route="codex", deployment="spark-wafer", reason="limited") == before["limited"] + 1
    assert sample("laneway_spills_total", route="codex", deployment="spark-wafer", reason="tokens") == before["spill"] + 1
    assert sample("laneway_breaker_skips_total", route="codex", deployment="spark-wafer") == before["breaker"] + 1
    assert sample("laneway_hedges_total", route="codex", winner="hedge") == before["hedge"] + 1
    assert sample("laneway_fallbacks_total", route="codex", deployment="spark-wafer", reason="5xx") == before["fallback"] + 1
    assert sample("laneway_fallbacks_total", route="codex", deployment="made-up", reason="429") == 0  # not a configured name
    # Three requests; the hedge loser adds its tokens, not a request.
    assert sample("laneway_requests_total", route="codex", deployment="codex-gpu", lane="gpu", status="200",
                  transport="http", endpoint="chat") == before["requests"] + 3
    assert sample("laneway_tokens_total", route="codex", deployment="codex-gpu", lane="gpu", team="platform",
                  kind="output") == before["tokens"] + 3 * 41 + 5
    # 40 tokens after the first one in 0.5 s: 80 tok/s, the GPU lane's rate.
    assert sample("laneway_decode_tokens_per_second_sum", route="codex", deployment="codex-gpu", lane="gpu") == pytest.approx(before["decode"] + 3 * 80)
    assert observe.usage[("platform", "codex-gpu")][2] >= 3 * 41 + 5


def test_redis_probe_measures_round_trips_and_counts_failures(tmp_path):
    probe = RedisProbe()
    with RedisServer() as redis:
        policy = load_policy(write_policy(tmp_path, f"store: {{redis_url: '{redis.url}'}}\n"))
        pings = sample("laneway_redis_ping_seconds_count", component="limits")
        failures = sample("laneway_redis_ping_failures_total", component="limits")
        asyncio.run(probe_twice(probe, policy, redis))
    assert sample("laneway_redis_ping_seconds_count", component="limits") == pings + 1
    assert sample("laneway_redis_ping_failures_total", component="limits") == failures + 1


async def probe_twice(probe: RedisProbe, policy, redis) -> None:
    try:
        await probe.probe(policy)
        redis.stop()
        await probe.probe(policy)
    finally:
        await probe.aclose()


def write_policy(tmp_path, extra: str):
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\nauth: open\n" + extra + "deployments:\n  - name: d\n    provider: openai\n    model: m\n"
        "    base_url: http://127.0.0.1:9/v1\nroutes:\n  - name: r\n    candidates: [d]\n")
    return path


def test_policy_reloads_are_counted_ok_and_failed(tmp_path, gpu_sim):
    text = write_policy(tmp_path, "").read_text().replace("http://127.0.0.1:9/v1", gpu_sim.url + "/v1")
    with proxy_from_yaml(tmp_path, text, name="reloaded.yaml") as proxy:
        path = tmp_path / "reloaded.yaml"
        before = scrape(proxy.url)
        path.write_text(text.replace("auth: open", "auth: nonsense"))
        wait_until(lambda: delta(before, scrape(proxy.url), "laneway_policy_reloads_total", result="failed") == 1)
        path.write_text(text.replace("- name: r\n", "- name: r2\n"))
        wait_until(lambda: delta(before, scrape(proxy.url), "laneway_policy_reloads_total", result="ok") == 1)
        assert delta(before, scrape(proxy.url), "laneway_policy_reloads_total", result="failed") == 1


def wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)

# --- refused requests, provider 429s, TTFT bucket edges -----------------------------------


def obs_finished(**fields) -> Outcome:
    return finished(**{"route": "obs-route", "deployment": "obs-gpu", **fields})


def series_of(route: str) -> set[tuple[str, str]]:
    """(family, lane) of every sample this route has, across the registry."""
    return {(family.name, s.labels.get("lane", "")) for family in families.REGISTRY.collect()
            for s in family.samples if s.labels.get("route") == route}


def test_a_refused_request_is_counted_but_creates_no_latency_or_token_series():
    observe = RequestMetrics(lambda: {"obs-gpu"})
    observe(obs_finished(route="obs-refused", deployment=None, hardware=None, status=404, upstream_started=0.0,
                     first_token_at=None, input_tokens=0, output_tokens=0))
    assert sample("laneway_requests_total", route="obs-refused", deployment="none", lane="none", status="404",
                  transport="http", endpoint="chat") == 1
    assert series_of("obs-refused") == {("laneway_requests", "none")}, "no lane=none latency or token series"


def test_provider_429s_are_counted_per_deployment_whether_relayed_or_fallen_back_from():
    observe = RequestMetrics(lambda: {"obs-wafer", "obs-gpu"})
    wafer, gpu = sample("laneway_upstream_rate_limited_total", deployment="obs-wafer"), \
        sample("laneway_upstream_rate_limited_total", deployment="obs-gpu")
    observe(obs_finished(reason="fallback:obs-wafer=429"))             # served by the GPU lane after the wafer 429
    observe(obs_finished(status=429, first_token_at=None))               # the GPU lane's own 429, relayed
    observe(obs_finished(reason="fallback:obs-wafer=503"))              # a fault, not a quota refusal
    assert sample("laneway_upstream_rate_limited_total", deployment="obs-wafer") == wafer + 1
    assert sample("laneway_upstream_rate_limited_total", deployment="obs-gpu") == gpu + 1


def interpolated_median(value: float, edges: tuple[float, ...]) -> float:
    """histogram_quantile(0.5, ...) of observations all equal to ``value`` (Prometheus interpolates linearly)."""
    lower = 0.0
    for upper in edges:
        if value <= upper:
            return lower + (upper - lower) * 0.5
        lower = upper
    return lower


@pytest.mark.parametrize("ttft_s", [0.05, 0.4, 0.404])  # the wafer lane's ~50 ms, the GPU lane's ~400 ms
def test_ttft_buckets_put_each_lane_mid_bucket(ttft_s):
    assert interpolated_median(ttft_s, families.TTFT_BUCKETS) == pytest.approx(ttft_s, rel=0.05)
