"""Bad bodies are refused with OpenAI's 400 before admission: nothing reserved, billed or forwarded.

Against the running proxy (HTTP and WebSocket turns) with a key carrying rate limits and a
hard daily budget, in front of a real simulated provider.
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import httpx
import orjson
import pytest
import websockets.sync.client as ws_client

from tests.support import proxy_from_yaml, record_outcomes

KEY = "lw-validation-key"
MESSAGES = [{"role": "user", "content": "hello"}]

POLICY = """\
version: 1
auth: keys
server: {{body_timeout_s: 0.3}}
keys:
  - {{name: hostile, sha256: {sha}, team: red, limits: {{rpm: 100000, tpm: {tpm}}}}}
team_budgets:
  red: {{daily_hard_usd: 1}}
deployments:
  - {{name: spark, provider: cerebras, model: sim-spark, base_url: "{wafer}/v1", hardware: wafer}}
routes:
  - {{name: codex, candidates: [spark]}}
"""

# (endpoint path, body without "model", the param the 400 must name, its code)
INVALID = [
    ("chat/completions", {"messages": MESSAGES, "max_tokens": -10**12}, "max_tokens", "integer_below_min_value"),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": -2**63}, "max_tokens", "integer_below_min_value"),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": 2**40}, "max_tokens", "integer_above_max_value"),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": True}, "max_tokens", "invalid_type"),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": 10.5}, "max_tokens", "invalid_type"),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": "10"}, "max_tokens", "invalid_type"),
    ("chat/completions", {"messages": MESSAGES, "max_completion_tokens": -1}, "max_completion_tokens",
     "integer_below_min_value"),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": 5, "max_completion_tokens": False},
     "max_completion_tokens", "invalid_type"),
    ("chat/completions", {}, "messages", "missing_required_parameter"),
    ("chat/completions", {"messages": "hello"}, "messages", "invalid_type"),
    ("chat/completions", {"messages": []}, "messages", "empty_array"),
    ("chat/completions", {"messages": ["hello"]}, "messages[0]", "invalid_type"),
    ("chat/completions", {"messages": MESSAGES, "temperature": "hot"}, "temperature", "invalid_type"),
    ("chat/completions", {"messages": MESSAGES, "temperature": 2.5}, "temperature", "decimal_above_max_value"),
    ("chat/completions", {"messages": MESSAGES, "temperature": -1}, "temperature", "decimal_below_min_value"),
    ("chat/completions", {"messages": MESSAGES, "top_p": True}, "top_p", "invalid_type"),
    ("chat/completions", {"messages": MESSAGES, "top_p": 1.5}, "top_p", "decimal_above_max_value"),
    ("chat/completions", {"messages": MESSAGES, "n": 0}, "n", "integer_below_min_value"),
    ("chat/completions", {"messages": MESSAGES, "n": 1.0}, "n", "invalid_type"),
    ("chat/completions", {"messages": MESSAGES, "stream": "true"}, "stream", "invalid_type"),
    ("chat/completions", {"messages": MESSAGES, "stream": 1}, "stream", "invalid_type"),
    ("chat/completions", {"messages": MESSAGES, "stream": True, "stream_options": "usage"}, "stream_options",
     "invalid_type"),
    ("completions", {}, "prompt", "missing_required_parameter"),
    ("completions", {"prompt": 5}, "prompt", "invalid_type"),
    ("completions", {"prompt": "hi", "max_tokens": -5}, "max_tokens", "integer_below_min_value"),
    ("completions", {"prompt": "hi", "n": -1}, "n", "integer_below_min_value"),
    ("responses", {}, "input", "missing_required_parameter"),
    ("responses", {"input": {"role": "user"}}, "input", "invalid_type"),
    ("responses", {"input": "hi", "max_output_tokens": -10**12}, "max_output_tokens", "integer_below_min_value"),
    ("responses", {"input": "hi", "max_output_tokens": True}, "max_output_tokens", "invalid_type"),
    ("responses", {"input": "hi", "stream": "yes"}, "stream", "invalid_type"),
    ("embeddings", {}, "input", "missing_required_parameter"),
    ("embeddings", {"input": None}, "input", "missing_required_parameter"),
]


@pytest.fixture
def make_proxy(tmp_path, wafer_sim):
    def make(tpm: int = 100_000):
        text = POLICY.format(sha=hashlib.sha256(KEY.encode()).hexdigest(), tpm=tpm, wafer=wafer_sim.url)
        return record_outcomes(proxy_from_yaml(tmp_path, text))

    return make


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{path}", content=orjson.dumps({"model": "codex", **body}),
                      headers={"authorization": f"Bearer {KEY}"}, timeout=10)


def sim_requests(sim) -> int:
    return httpx.get(sim.url + "/sim/stats").json()["requests"]


def assert_refused(response: httpx.Response, param: str, code: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == {"error": {"message": response.json()["error"]["message"],
                                         "type": "invalid_request_error", "param": param, "code": code}}
    assert f"'{param}'" in response.json()["error"]["message"]


def test_every_invalid_field_is_a_400_naming_it_and_nothing_is_counted(make_proxy, wafer_sim):
    with make_proxy() as server:
        for path, body, param, code in INVALID:
            assert_refused(post(server, path, body), param, code)
        assert sim_requests(wafer_sim) == 0  # the provider received nothing
        assert len(server.outcomes) == len(INVALID)
        assert all(o.status == 400 and o.deployment is None for o in server.outcomes)  # no ledger row: never routed
        assert server.app.state.accounting.ledger._pending == []
        assert server.app.state.limiter.stats.rejections == {}
        # nothing was reserved: the first valid request sees the whole limit
        ok = post(server, "chat/completions", {"messages": MESSAGES, "max_tokens": 5})
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-remaining-requests"] == str(100_000 - 1)
        reserved = len(orjson.dumps({"model": "codex", "messages": MESSAGES, "max_tokens": 5})) // 4 + 5
        assert int(ok.headers["x-ratelimit-remaining-tokens"]) == 100_000 - reserved


# Bodies that are not one JSON object a provider could read the same way: refused whole, as invalid_json.
MALFORMED = [
    b'{"model":"codex","messages":[{"role":"user","content":"caf\xe9"}]}',  # Latin-1, not UTF-8
    b'{"model":"codex","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',  # a UTF-8-encoded surrogate
    b'{"model":"codex","messages":[{"role":"user","content":"\\ud800"}]}',  # a lone surrogate escape
    b'{"model":"codex","messages":' + b"[" * 1100 + b"]" * 1100 + b"}",  # nested past any parser's limit
    b'{"model":"codex","messages":[{"role":"user","content":"hi"}],"n":1e999}',  # a number no double holds
    b'{"model":"codex","messages":[]} {"model":"x"}',  # two documents
    b'\xef\xbb\xbf{"model":"codex","messages":[]}',  # a byte-order mark
    b'[{"model":"codex"}]',  # not an object
]


def test_a_body_that_is_not_one_json_object_is_refused_before_admission(make_proxy, wafer_sim):
    with make_proxy() as server:
        for raw in MALFORMED:
            response = httpx.post(f"{server.url}/v1/chat/completions", content=raw,
                                  headers={"authorization": f"Bearer {KEY}"}, timeout=10)
            assert response.status_code == 400, (raw[:60], response.text)
            assert response.json()["error"]["code"] == "invalid_json"
        assert sim_requests(wafer_sim) == 0
        assert all(o.status == 400 and o.deployment is None for o in server.outcomes)
        assert server.app.state.limiter.stats.rejections == {}


def test_a_duplicate_model_routes_on_the_one_the_provider_reads(make_proxy, wafer_sim):
    """Last wins, as in orjson, json and the providers' parsers: the proxy routes on "codex" and the
    provider is sent the deployment's model alone (never the decoy before it)."""
    raw = b'{"model":"gpt-pricier","messages":[{"role":"user","content":"hello"}],"max_tokens":3,"model":"codex"}'
    with make_proxy() as server:
        response = httpx.post(f"{server.url}/v1/chat/completions", content=raw,
                              headers={"authorization": f"Bearer {KEY}"}, timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["x-laneway-deployment"] == "spark"
    served = httpx.get(wafer_sim.url + "/sim/stats").json()["by_model"]
    assert set(served) == {"sim-spark"} and served["sim-spark"]["requests"] == 1


@pytest.mark.parametrize("event, param", [
    ({"input": "hi", "max_output_tokens": -10**12}, "max_output_tokens"),
    ({"input": "hi", "max_output_tokens": False}, "max_output_tokens"),
    ({"input": "hi", "temperature": "warm"}, "temperature"),
    ({}, "input"),
])
def test_websocket_turn_with_an_invalid_field_is_refused_in_band(make_proxy, wafer_sim, event, param):
    with make_proxy() as server:
        url = "ws" + server.url[4:] + "/v1/responses"
        with ws_client.connect(url, additional_headers={"authorization": f"Bearer {KEY}"}) as ws:
            ws.send(json.dumps({"type": "response.create", "model": "codex", **event}))
            error = json.loads(ws.recv(timeout=10))
            assert (error["type"], error["status"]) == ("error", 400)
            assert (error["error"]["type"], error["error"]["param"]) == ("invalid_request_error", param)
            ws.send(json.dumps({"type": "response.create", "model": "codex", "input": "hi", "max_output_tokens": 3}))
            while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
                pass  # the connection stays usable
        assert sim_requests(wafer_sim) == 1
        assert [o.status for o in server.outcomes] == [400, 200]


def test_hostile_negative_max_tokens_cannot_buy_tokens_past_the_limit(make_proxy, wafer_sim):
    """4 clients looping on negative / boolean caps beside normal traffic: admitted tokens stay <= tpm."""
    limit = 3000
    hostile_caps = [-10**12, -1, True, -2**63]
    with make_proxy(tpm=limit) as server:
        stop = threading.Event()
        hostile_statuses: list[int] = []

        def hostile(cap: object) -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    response = client.post(f"{server.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                                           content=orjson.dumps({"model": "codex", "messages": MESSAGES, "max_tokens": cap}))
                    hostile_statuses.append(response.status_code)

        threads = [threading.Thread(target=hostile, args=(cap,)) for cap in hostile_caps]
        for thread in threads:
            thread.start()
        used = 0
        with httpx.Client(timeout=10) as client:
            for _ in range(80):
                response = client.post(f"{server.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                                       content=orjson.dumps({"model": "codex", "messages": MESSAGES, "max_tokens": 100}))
                assert response.status_code in (200, 429)
                if response.status_code == 200:
                    used += response.json()["usage"]["total_tokens"]
        stop.set()
        for thread in threads:
            thread.join()
        assert 0 < used <= limit
        assert hostile_statuses and set(hostile_statuses) == {400}
        stats = httpx.get(wafer_sim.url + "/sim/stats").json()["by_model"]["sim-spark"]
        assert stats["input_tokens"] + stats["output_tokens"] <= limit  # what the provider served


def test_a_body_that_never_arrives_is_cut_off_before_admission(make_proxy, wafer_sim):
    with make_proxy() as server, socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + KEY.encode()
                     + b"\r\nContent-Length: 1000\r\n\r\n" + b'{"model": "codex", ')
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
        deadline = time.monotonic() + 2
        while not server.outcomes and time.monotonic() < deadline:
            time.sleep(0.01)
        (outcome,) = server.outcomes
        assert (outcome.status, outcome.error_code, outcome.deployment) == (400, "client_disconnected", None)
    assert sim_requests(wafer_sim) == 0
