"""Rate limits through the running proxy: spill, client 429s, headers, reconciliation, provider learning.

Run against the in-memory store and a real Redis (same tests); each test uses fresh names so
the shared Redis never carries state from one test into another.
"""
from __future__ import annotations

import hashlib
import socket
import time
import uuid

import httpx
import openai
import orjson
import pytest

from tests.redis_support import redis_server  # noqa: F401  (fixture)
from tests.support import proxy_from_yaml, record_outcomes, simulator

KEY = "lw-limits-test-key"
MESSAGES = [{"role": "user", "content": "write a haiku about rate limits"}]

POLICY = """\
version: 1
auth: keys
{store}
keys:
  - name: {key_name}
    sha256: {sha}
    {key_limits}
deployments:
  - name: {wafer}
    provider: cerebras
    model: sim-spark
    base_url: {wafer_url}/v1
    hardware: wafer
    {wafer_limits}
  - name: {gpu}
    provider: openai
    model: sim-codex
    base_url: {gpu_url}/v1
routes:
  - name: codex
    candidates: [{wafer}, {gpu}]
  - name: fast
    candidates: [{wafer}]
"""


@pytest.fixture(params=["memory", "redis"])
def store_yaml(request) -> str:
    if request.param == "memory":
        return ""
    server = request.getfixturevalue("redis_server")
    return f"store: {{redis_url: '{server.url}', timeout_ms: 500}}"


@pytest.fixture
def limited_proxy(tmp_path, wafer_sim, gpu_sim, store_yaml):
    """Factory: a proxy whose wafer deployment / key carry the given limits (YAML flow mappings)."""
    suffix = uuid.uuid4().hex[:6]

    def make(wafer_limits: str = "", key_limits: str = "", wafer_url: str | None = None, store: str | None = None):
        text = POLICY.format(
            store=store_yaml if store is None else store, key_name=f"team-{suffix}", sha=hashlib.sha256(KEY.encode()).hexdigest(),
            key_limits=f"limits: {key_limits}" if key_limits else "", wafer=f"wafer-{suffix}", gpu=f"gpu-{suffix}",
            wafer_url=wafer_url or wafer_sim.url, gpu_url=gpu_sim.url,
            wafer_limits=f"limits: {wafer_limits}" if wafer_limits else "",
        )
        server = proxy_from_yaml(tmp_path, text, name=f"policy-{uuid.uuid4().hex[:6]}.yaml")
        server.names = {"wafer": f"wafer-{suffix}", "gpu": f"gpu-{suffix}", "key": f"team-{suffix}"}
        return server

    return make


def post(server, model: str = "codex", max_tokens: int = 5, **extra) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, **extra}
    return httpx.post(server.url + "/v1/chat/completions", content=orjson.dumps(body),
                      headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"}, timeout=10)


def reservation(max_tokens: int = 5, **extra) -> int:
    """What the proxy reserves for post(): body bytes / 4 plus the requested output."""
    body = {"model": "codex", "messages": MESSAGES, "max_tokens": max_tokens, **extra}
    return len(orjson.dumps(body)) // 4 + max_tokens


def spills_from(response: httpx.Response, deployment: str) -> bool:
    """The route reason says ``deployment`` was passed over for quota: refused at admission
    (``fallback:<name>=limited``) or moved back by routing's headroom view (``spill:<name>=...``)."""
    reason = response.headers["x-laneway-route-reason"]
    return f"{deployment}=limited" in reason or f"spill:{deployment}=" in reason


def settled(limiter, timeout: float = 2.0) -> None:
    """Wait for the limiter's background settle/learn writes to land."""
    deadline = time.monotonic() + timeout
    while limiter._tasks and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)


def test_deployment_limit_spills_to_the_next_candidate_then_429s(limited_proxy):
    with limited_proxy(wafer_limits="{rpm: 2}") as server:
        wafer, gpu = server.names["wafer"], server.names["gpu"]
        served = [post(server).headers["x-laneway-deployment"] for _ in range(3)]
        assert served == [wafer, wafer, gpu]
        spilled = post(server)
        assert spilled.status_code == 200 and spills_from(spilled, wafer)
        refused = post(server, model="fast")  # its only candidate is at its limit
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert f"{wafer}=limited" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60 and 0 < int(refused.headers["retry-after-ms"]) <= 60_000
        stats = server.app.state.limiter.stats
        assert stats.rejections[("deployment", wafer)] >= 1
        assert stats.remaining[(wafer, "rpm")][:2] == (0, 2)
        assert server.app.state.limiter.headroom(wafer).fraction_left(time.monotonic()) == 0.0


def test_client_limit_answers_429_in_openai_shape_with_its_own_headers(limited_proxy):
    with limited_proxy(key_limits="{rpm: 2, tpm: 100000}") as server:
        first = post(server)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(first.headers["x-ratelimit-remaining-tokens"]) == 100000 - reservation()
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        assert post(server).headers["x-ratelimit-remaining-requests"] == "0"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=5)
        response = caught.value.response
        assert caught.value.code == "rate_limit_exceeded" and caught.value.type == "rate_limit_error"
        assert server.names["key"] in caught.value.message
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert 0 < int(response.headers["retry-after-ms"]) <= 60_000
        assert response.headers["x-ratelimit-limit-requests"] == "2"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert server.app.state.limiter.stats.rejections[("client", server.names["key"])] == 1


def test_tokens_are_reconciled_with_real_usage_after_a_normal_response(limited_proxy):
    limit = 10_000
    with limited_proxy(key_limits=f"{{tpm: {limit}}}") as server:
        first = post(server, max_tokens=50)
        used = first.json()["usage"]["total_tokens"]
        assert used < reservation(50)  # the reservation was an over-estimate...
        settled(server.app.state.limiter)
        second = post(server, max_tokens=50)
        # ...so the next request sees the real usage charged, not the reservation
        assert int(second.headers["x-ratelimit-remaining-tokens"]) == limit - used - reservation(50)


def test_client_disconnect_mid_stream_charges_what_was_produced_and_frees_the_slot(limited_proxy, gpu_sim):
    limit = 100_000
    with limited_proxy(key_limits=f"{{tpm: {limit}, concurrency: 1}}") as server:
        body = {"model": "codex", "messages": MESSAGES, "max_tokens": 5000, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", content=orjson.dumps(body),
                          headers={"authorization": f"Bearer {KEY}"}, timeout=10) as response:
            assert response.status_code == 200
            busy = post(server)  # the one concurrency slot is taken by the stream
            assert busy.status_code == 429 and "concurrent" in busy.json()["error"]["message"]
            for _ in response.iter_bytes():
                break  # read a little, then hang up
        limiter = server.app.state.limiter
        deadline = time.monotonic() + 5
        while limiter._live and time.monotonic() < deadline:
            time.sleep(0.02)
        settled(limiter)
        after = post(server, max_tokens=5)
        assert after.status_code == 200  # slot released
        charged = limit - int(after.headers["x-ratelimit-remaining-tokens"]) - reservation(5)
        assert 0 < charged < len(orjson.dumps(body)) // 4 + 5000  # what was produced, not the whole reservation


def test_client_gone_the_moment_its_body_is_sent_still_frees_the_slot_at_once(limited_proxy, wafer_sim):
    """The hang-up listener starts only once a call has run for WATCH_AFTER_S: a client that sends its
    request and closes at once (before the listener exists) is still noticed, the upstream aborted
    and the slot freed well before the ~1.3 s body would have ended."""
    with record_outcomes(limited_proxy(key_limits="{concurrency: 1}")) as server:
        before = httpx.get(wafer_sim.url + "/sim/stats").json()["disconnects"]
        body = orjson.dumps({"model": "fast", "messages": MESSAGES, "max_tokens": 5000})
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body))
        hung_up = time.monotonic()
        while not server.outcomes and time.monotonic() - hung_up < 5:
            time.sleep(0.01)
        assert server.outcomes[-1].status == 499 and time.monotonic() - hung_up < 0.5
        assert httpx.get(wafer_sim.url + "/sim/stats").json()["disconnects"] == before + 1
        settled(server.app.state.limiter)
        assert post(server, model="fast").status_code == 200  # slot released


def test_client_disconnect_while_waiting_for_a_whole_body_cancels_upstream_and_frees_the_slot(limited_proxy, wafer_sim):
    """Non-streamed: the client hangs up while the upstream is still generating (5000 tokens at
    4000 tok/s, ~1.3 s): the upstream exchange is aborted at once, the concurrency slot freed and
    the request billed at the estimate, not the whole reservation."""
    limit = 100_000
    with record_outcomes(limited_proxy(key_limits=f"{{tpm: {limit}, concurrency: 1}}")) as server:
        before = httpx.get(wafer_sim.url + "/sim/stats").json()["disconnects"]
        body = {"model": "fast", "messages": MESSAGES, "max_tokens": 5000}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/chat/completions", content=orjson.dumps(body),
                       headers={"authorization": f"Bearer {KEY}"}, timeout=httpx.Timeout(5, read=0.3))
        hung_up = time.monotonic()
        while not server.outcomes and time.monotonic() - hung_up < 5:
            time.sleep(0.01)
        assert server.outcomes[-1].status == 499 and time.monotonic() - hung_up < 0.5  # not after the 1.3 s body
        assert httpx.get(wafer_sim.url + "/sim/stats").json()["disconnects"] == before + 1
        settled(server.app.state.limiter)
        after = post(server, model="fast", max_tokens=5)
        assert after.status_code == 200  # slot released
        charged = limit - int(after.headers["x-ratelimit-remaining-tokens"]) - reservation(5)
        assert 0 < charged < 5000  # the prompt estimate, not the 5000-token reservation


def test_upstream_drop_mid_stream_reconciles_and_frees_the_slot(limited_proxy, wafer_sim):
    limit = 100_000
    with limited_proxy(key_limits=f"{{tpm: {limit}, concurrency: 1}}") as server:
        httpx.post(wafer_sim.url + "/sim/faults", json={"mode": "drop_mid_stream", "count": 1}).raise_for_status()
        body = {"model": "fast", "messages": MESSAGES, "max_tokens": 40, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", content=orjson.dumps(body),
                          headers={"authorization": f"Bearer {KEY}"}, timeout=10) as response:
            payload = b"".join(response.iter_bytes())
        assert b"upstream_stream_error" in payload
        settled(server.app.state.limiter)
        after = post(server, max_tokens=5)
        assert after.status_code == 200  # slot released
        charged = limit - int(after.headers["x-ratelimit-remaining-tokens"]) - reservation(5)
        assert 0 < charged < len(orjson.dumps(body)) // 4 + 40


def test_provider_headers_are_learned_and_spill_before_the_provider_429s(limited_proxy):
    """The provider grants 2 requests/minute; we never told Laneway, its headers do."""
    with simulator("instant", rpm=2) as provider:
        with limited_proxy(wafer_limits="{concurrency: 50}", wafer_url=provider.url) as server:
            wafer = server.names["wafer"]
            served = [post(server).headers["x-laneway-deployment"] for _ in range(2)]
            settled(server.app.state.limiter)
            third = post(server)
            assert served == [wafer, wafer]
            assert third.headers["x-laneway-deployment"] != wafer and spills_from(third, wafer)
            stats = httpx.get(provider.url + "/sim/stats").json()
            assert stats["rate_limited"] == 0  # we spilled before the provider had to refuse
            remaining, limit, reset_at = server.app.state.limiter.stats.provider[(wafer, "requests")]
            assert (remaining, limit) == (0, 2) and reset_at > time.time()
            room = server.app.state.limiter.headroom(wafer)
            assert room.requests == 0 and room.fraction_left(time.monotonic()) == 0.0


def test_upstream_429_marks_the_deployment_exhausted_until_retry_after(limited_proxy, wafer_sim):
    with limited_proxy(wafer_limits="{concurrency: 50}") as server:
        wafer, gpu = server.names["wafer"], server.names["gpu"]
        httpx.post(wafer_sim.url + "/sim/faults", json={"mode": "429", "count": 1}).raise_for_status()
        first = post(server)
        assert first.headers["x-laneway-route-reason"] == f"fallback:{wafer}=429"
        settled(server.app.state.limiter)
        before = httpx.get(wafer_sim.url + "/sim/stats").json()["requests"]
        second = post(server)
        assert second.headers["x-laneway-deployment"] == gpu
        assert spills_from(second, wafer)
        assert httpx.get(wafer_sim.url + "/sim/stats").json()["requests"] == before  # not even tried
        time.sleep(1.1)  # the simulator's retry-after is 1s
        assert post(server).headers["x-laneway-deployment"] == wafer


def test_a_request_bigger_than_the_client_token_limit_says_what_to_change(limited_proxy):
    with limited_proxy(key_limits="{tpm: 100}") as server:
        refused = post(server, max_tokens=500)
        assert refused.status_code == 429
        assert "lower max_tokens" in refused.json()["error"]["message"]


def test_a_deployment_refused_at_admission_shows_as_limited_in_the_route_reason(limited_proxy):
    """Concurrency is invisible to routing's headroom view, so only admission can refuse it."""
    with limited_proxy(wafer_limits="{concurrency: 1}") as server:
        wafer, gpu = server.names["wafer"], server.names["gpu"]
        body = {"model": "fast", "messages": MESSAGES, "max_tokens": 3000, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", content=orjson.dumps(body),
                          headers={"authorization": f"Bearer {KEY}"}, timeout=10) as response:
            assert response.status_code == 200
            spilled = post(server)
            assert spilled.headers["x-laneway-deployment"] == gpu
            assert spilled.headers["x-laneway-route-reason"] == f"fallback:{wafer}=limited"
        stats = server.app.state.limiter.stats
        assert stats.rejections[("deployment", wafer)] == 1 and stats.spills[gpu] == 1
