"""Responses WebSocket mode for clients: the real openai SDK (`responses.connect()`) and a raw
`websockets` client against Laneway, with the simulated providers behind it."""
from __future__ import annotations

import hashlib
import json
import time

import httpx
import openai
import pytest
import websockets.sync.client as ws_client
from openai.types.responses import ResponseStreamEvent
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter
from websockets.exceptions import ConnectionClosed, InvalidStatus

from proxy.api.ws_server import UVICORN_WS
from proxy.config import PolicyError, parse_policy
from proxy.simulate.text import count_input_tokens
from tests.conftest import ALICE_KEY
from tests.support import proxy_from_yaml, record_outcomes

POLICY = """\
version: 1
auth: {auth}
keys:
  - {{name: alice, sha256: {alice_sha}, team: platform}}
server:
  max_body_bytes: {max_body}
  websocket: {{enabled: {enabled}, max_connection_minutes: {minutes}, idle_timeout_s: {idle}}}
deployments:
  - {{name: spark-wafer, provider: cerebras, model: sim-spark, base_url: "{wafer}/v1", hardware: wafer}}
  - {{name: codex-gpu, provider: openai, model: sim-codex, base_url: "{gpu}/v1", hardware: gpu}}
routes:
  - {{name: codex, candidates: [spark-wafer, codex-gpu]}}
  - {{name: fast, candidates: [spark-wafer]}}
  - {{name: deep, candidates: [codex-gpu]}}
"""


@pytest.fixture
def make_ws_proxy(tmp_path, wafer_sim, gpu_sim):
    def make(enabled: bool = True, minutes: float = 60, idle: float = 600, auth: str = "open", ws: str = UVICORN_WS,
             max_body: int = 1 << 20):
        text = POLICY.format(enabled=str(enabled).lower(), minutes=minutes, idle=idle, wafer=wafer_sim.url, max_body=max_body,
                             gpu=gpu_sim.url, auth=auth, alice_sha=hashlib.sha256(ALICE_KEY.encode()).hexdigest())
        return record_outcomes(proxy_from_yaml(tmp_path, text, ws=ws))

    return make


@pytest.fixture
def wsproxy(make_ws_proxy):
    with make_ws_proxy() as server:
        yield server


def sdk(server, key: str = "anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def ws_url(server) -> str:
    return "ws" + server.url[4:] + "/v1/responses"


def until_done(conn) -> list:
    """SDK events up to and including the turn's terminal event (or an error)."""
    events = []
    for event in conn:
        events.append(event)
        if event.type in ("response.completed", "response.failed", "response.incomplete", "error"):
            return events
    raise AssertionError(f"socket closed before the turn ended: {[e.type for e in events]}")


def raw_until_done(ws) -> list[dict]:
    events = []
    while True:
        event = json.loads(ws.recv(timeout=10))
        events.append(event)
        if event["type"] in ("response.completed", "response.failed", "response.incomplete", "error"):
            return events


def sim_stats(sim) -> dict:
    return httpx.get(sim.url + "/sim/stats").json()


def inject(sim, mode: str, count: int = 1) -> None:
    httpx.post(sim.url + "/sim/faults", json={"mode": mode, "count": count}).raise_for_status()


def text_of(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_multi_turn_with_previous_response_id_expands_the_context(wsproxy, wafer_sim):
    with sdk(wsproxy).responses.connect() as conn:
        conn.response.create(model="codex", input="first question", max_output_tokens=5)
        first = until_done(conn)
        assert [e.type for e in first][:3] == ["laneway.route", "response.created", "response.in_progress"]
        assert text_of(first).split() == [f"tok{i}" for i in range(1, 6)]
        done = first[-1]
        assert done.type == "response.completed" and done.response.id and done.response.usage.output_tokens == 5

        second_input = [{"role": "user", "content": "and a follow-up"}]
        conn.response.create(model="codex", input=second_input, previous_response_id=done.response.id,
                             max_output_tokens=3, store=False)
        second = until_done(conn)
        assert second[-1].type == "response.completed"
        assert text_of(second).split() == ["tok1", "tok2", "tok3"]

    # The upstream (HTTP only) got the whole conversation: first input, first output, new input.
    expanded = {"input": [{"type": "message", "role": "user", "content": "first question"},
                          {"content": [{"text": "tok1 tok2 tok3 tok4 tok5 "}]}, *second_input]}
    row = sim_stats(wafer_sim)["by_model"]["sim-spark"]
    assert row["requests"] == 2
    assert row["input_tokens"] == count_input_tokens({"input": "first question"}) + count_input_tokens(expanded)
    assert second[-1].response.usage.input_tokens == count_input_tokens(expanded)


def test_turns_run_on_a_plain_asgi_server_one_message_per_frame(make_ws_proxy):
    """Without proxy.api.ws_server's batch extension (any other ASGI server) frames go one by one."""
    with make_ws_proxy(ws="websockets-sansio") as server, sdk(server).responses.connect() as conn:
        conn.response.create(model="fast", input="first", max_output_tokens=3)
        first = until_done(conn)
        conn.response.create(model="fast", input="next", previous_response_id=first[-1].response.id, max_output_tokens=2)
        second = until_done(conn)
    assert text_of(first).split() == ["tok1", "tok2", "tok3"] and text_of(second).split() == ["tok1", "tok2"]
    assert [e.type for e in second][:3] == ["laneway.route", "response.created", "response.in_progress"]


def test_turns_are_routed_billed_and_recorded_like_http(wsproxy):
    with sdk(wsproxy).responses.connect() as conn:
        conn.response.create(model="deep", input="hi", max_output_tokens=4)
        events = until_done(conn)
    route = events[0]
    assert route.type == "laneway.route"
    assert (route.deployment, route.lane, route.reason) == ("codex-gpu", "gpu", "primary")
    for _ in range(50):
        if wsproxy.outcomes:
            break
        time.sleep(0.02)
    [outcome] = wsproxy.outcomes
    assert outcome.transport == "websocket" and outcome.endpoint == "responses" and outcome.stream
    assert (outcome.route, outcome.deployment, outcome.hardware, outcome.status) == ("deep", "codex-gpu", "gpu", 200)
    assert outcome.output_tokens == 4 and outcome.usage_reported and outcome.first_token_at is not None
    stats = wsproxy.app.responses_socket.stats
    assert stats.connections_total == 1 and stats.turns == 1


def test_routing_may_change_lane_between_turns(wsproxy, wafer_sim):
    inject(wafer_sim, "503")
    with sdk(wsproxy).responses.connect() as conn:
        conn.response.create(model="codex", input="one", max_output_tokens=2)
        first = until_done(conn)
        conn.response.create(model="codex", input="two", max_output_tokens=2,
                             previous_response_id=first[-1].response.id)
        second = until_done(conn)
    assert (first[0].deployment, first[0].reason) == ("codex-gpu", "fallback:spark-wafer=503")
    assert (second[0].deployment, second[0].reason) == ("spark-wafer", "primary")
    assert second[-1].type == "response.completed"


def test_warm_up_returns_an_id_without_calling_upstream(wsproxy, wafer_sim):
    with sdk(wsproxy).responses.connect() as conn:
        conn.send({"type": "response.create", "model": "codex", "generate": False,
                   "input": [{"role": "user", "content": "system context"}]})
        warm = until_done(conn)
        assert [e.type for e in warm] == ["response.created", "response.completed"]
        assert warm[-1].response.output == [] and warm[-1].response.usage.output_tokens == 0
        for event in warm:  # every field the spec requires, strictly typed
            TypeAdapter(ResponseStreamEvent).validate_python(event.model_dump(exclude_unset=True))
        assert sim_stats(wafer_sim)["requests"] == 0

        conn.response.create(model="codex", input="now answer", previous_response_id=warm[-1].response.id,
                             max_output_tokens=2)
        turn = until_done(conn)
    assert turn[-1].type == "response.completed"
    expanded = {"input": [{"content": "system context"}, {"content": "now answer"}]}
    assert sim_stats(wafer_sim)["input_tokens"] == count_input_tokens(expanded)
    assert wsproxy.app.responses_socket.stats.warmups == 1


def test_continuation_miss_answers_previous_response_not_found(wsproxy, wafer_sim):
    with ws_client.connect(ws_url(wsproxy)) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "codex", "input": "x",
                            "previous_response_id": "resp_never_seen"}))
        [error] = raw_until_done(ws)
        assert error["type"] == "error" and error["status"] == 400
        assert error["error"]["code"] == "previous_response_not_found"
        assert error["error"]["param"] == "previous_response_id"
        assert set(error["error"]) == {"type", "code", "message", "param"}
        # the socket stays usable: the client restarts the chain with full context
        ws.send(json.dumps({"type": "response.create", "model": "codex", "input": "x", "max_output_tokens": 1}))
        assert raw_until_done(ws)[-1]["type"] == "response.completed"
    assert sim_stats(wafer_sim)["requests"] == 1


def test_error_events_always_carry_status_and_parse_in_the_sdk(wsproxy, wafer_sim):
    with sdk(wsproxy).responses.connect() as conn:
        conn.response.create(model="no-such-model", input="x")
        [missing] = until_done(conn)
        assert missing.type == "error" and missing.code == "model_not_found"
        inject(wafer_sim, "429")
        conn.response.create(model="fast", input="x", max_output_tokens=1)
        [limited] = until_done(conn)
        assert limited.type == "error" and limited.code == "rate_limit_exceeded"
    with ws_client.connect(ws_url(wsproxy)) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "no-such-model", "input": "x"}))
        [event] = raw_until_done(ws)
        assert event["status"] == 404 and event["error"]["type"] == "invalid_request_error"
        inject(wafer_sim, "429")
        ws.send(json.dumps({"type": "response.create", "model": "fast", "input": "x"}))
        [event] = raw_until_done(ws)
        assert event["status"] == 429 and event["error"]["type"] == "rate_limit_error"
        assert float(event["headers"]["retry-after"]) > 0
        assert event["error"]["headers"] == event["headers"]  # where the SDK reads them
        ws.send("not json")
        [event] = raw_until_done(ws)
        assert (event["status"], event["error"]["code"]) == (400, "invalid_json")


def test_response_processed_is_ignored(wsproxy):
    with ws_client.connect(ws_url(wsproxy)) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "codex", "input": "x", "max_output_tokens": 2,
                            "stream": True, "client_metadata": {"x": "y"}}))
        done = raw_until_done(ws)[-1]
        ws.send(json.dumps({"type": "response.processed", "response_id": done["response"]["id"]}))
        ws.send(json.dumps({"type": "response.create", "model": "codex", "input": "y", "max_output_tokens": 1,
                            "previous_response_id": done["response"]["id"]}))
        events = raw_until_done(ws)
    assert [e["type"] for e in events if e["type"] == "error"] == []
    assert events[-1]["type"] == "response.completed"


def test_stream_id_lanes_run_side_by_side_and_echo_the_lane(wsproxy):
    with ws_client.connect(ws_url(wsproxy)) as ws:
        for lane, n in (("a", 40), ("b", 3), ("a", 2)):
            ws.send(json.dumps({"type": "response.create", "model": "deep", "input": lane, "max_output_tokens": n,
                                "stream_id": lane}))
        completed = []
        while len(completed) < 3:
            event = json.loads(ws.recv(timeout=10))
            assert event["stream_id"] in ("a", "b")
            if event["type"] == "response.completed":
                completed.append((event["stream_id"], event["response"]["usage"]["output_tokens"]))
    # lane b's short turn finishes while lane a's long one streams; lane a stays FIFO
    assert completed == [("b", 3), ("a", 40), ("a", 2)]


def test_disabled_websocket_answers_426_and_http_still_works(make_ws_proxy):
    with make_ws_proxy(enabled=False) as server:
        with pytest.raises(InvalidStatus) as refused:
            ws_client.connect(ws_url(server))
        assert refused.value.response.status_code == 426
        assert json.loads(refused.value.response.body)["error"]["code"] == "websocket_disabled"
        with pytest.raises(Exception, match="426"):
            with sdk(server).responses.connect():
                pass
        result = sdk(server).responses.create(model="codex", input="x", max_output_tokens=2)
        assert result.output_text.split() == ["tok1", "tok2"]
        assert server.app.responses_socket.stats.refused == 2


def test_handshake_needs_a_valid_key_when_keys_are_enforced(make_ws_proxy):
    with make_ws_proxy(auth="keys") as server:
        with pytest.raises(InvalidStatus) as refused:
            ws_client.connect(ws_url(server))
        assert refused.value.response.status_code == 401
        with sdk(server, ALICE_KEY).responses.connect() as conn:
            conn.response.create(model="codex", input="x", max_output_tokens=1)
            assert until_done(conn)[-1].type == "response.completed"
        assert server.outcomes[-1].key_name == "alice" and server.outcomes[-1].team == "platform"


def test_connection_cap_ends_with_websocket_connection_limit_reached(make_ws_proxy):
    with make_ws_proxy(minutes=0.01) as server:  # 0.6 s
        with ws_client.connect(ws_url(server)) as ws:
            ws.send(json.dumps({"type": "response.create", "model": "codex", "input": "x", "max_output_tokens": 1}))
            assert raw_until_done(ws)[-1]["type"] == "response.completed"
            event = json.loads(ws.recv(timeout=5))
            assert event["type"] == "error" and event["status"] == 400
            assert event["error"]["code"] == "websocket_connection_limit_reached"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd.code == 1000
        assert server.app.responses_socket.stats.connection_limit == 1


def test_idle_socket_is_closed_and_keepalive_and_compression_are_on(make_ws_proxy):
    with make_ws_proxy(idle=0.3) as server:
        with ws_client.connect(ws_url(server)) as ws:
            assert [type(e).__name__ for e in ws.protocol.extensions] == ["PerMessageDeflate"]
            ws.ping().wait(5)  # pong from the server
            ws.send(json.dumps({"type": "response.create", "model": "codex", "input": "x", "max_output_tokens": 1}))
            assert raw_until_done(ws)[-1]["type"] == "response.completed"
            finished = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd.reason == "idle timeout"
            assert 0.25 < time.monotonic() - finished < 2, "the idle clock starts when the last turn ends"


def test_client_drop_mid_turn_cancels_upstream_and_reconciles_usage(wsproxy, gpu_sim):
    ws = ws_client.connect(ws_url(wsproxy))
    ws.send(json.dumps({"type": "response.create", "model": "deep", "input": "long", "max_output_tokens": 4000}))
    deltas = 0
    while deltas < 5:
        if json.loads(ws.recv(timeout=10))["type"] == "response.output_text.delta":
            deltas += 1
    ws.socket.close()  # vanish without a close frame, like a killed client
    for _ in range(200):
        if sim_stats(gpu_sim)["disconnects"] and wsproxy.outcomes:
            break
        time.sleep(0.02)
    stats = sim_stats(gpu_sim)
    assert stats["disconnects"] == 1, "the upstream stream was not cancelled"
    assert 5 <= stats["output_tokens"] < 4000
    [outcome] = wsproxy.outcomes
    assert (outcome.status, outcome.error_code, outcome.transport) == (499, "client_disconnected", "websocket")
    assert 5 <= outcome.output_tokens <= stats["output_tokens"] and not outcome.usage_reported
    assert wsproxy.app.responses_socket.stats.client_drops == 1


def test_websocket_policy_fields_are_validated():
    base = "version: 1\nauth: open\n{server}deployments:\n  - {{name: a, provider: openai, model: m, base_url: http://x/v1{dep}}}\n"
    policy = parse_policy(base.format(server="server: {websocket: {enabled: false, max_connection_minutes: 5}}\n",
                                      dep=", websocket: true, websocket_max_connections: 2"))
    assert policy.server.websocket.enabled is False and policy.server.websocket.max_connection_minutes == 5
    assert policy.deployments["a"].websocket and policy.deployments["a"].websocket_max_connections == 2
    assert parse_policy(base.format(server="", dep="")).server.websocket.enabled is True
    with pytest.raises(PolicyError) as bad:
        parse_policy(base.format(server="server: {websocket: {enabled: 1, idle_timeout_s: 0}}\n",
                                 dep=", websocket: sometimes, websocket_max_connections: 0"), source="p.yaml")
    text = str(bad.value)
    assert "p.yaml:3: server.websocket.enabled: expected true or false" in text
    assert "server.websocket.idle_timeout_s: must be a finite number greater than 0" in text
    assert "p.yaml:5: deployments[0].websocket: expected true or false, got a string" in text
    assert "deployments[0].websocket_max_connections: must be greater than 0" in text


LEDGER_POLICY = """\
version: 1
auth: keys
keys:
  - {{name: alice, sha256: {alice}, team: platform}}
  - {{name: ops, sha256: {admin}, admin: true}}
deployments:
  - {{name: codex-gpu, provider: openai, model: sim-codex, base_url: "{gpu}/v1", hardware: gpu}}
routes:
  - {{name: deep, candidates: [codex-gpu]}}
ledger:
  flush_interval_s: 0.05
"""


def scrape(base: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(httpx.get(base + "/metrics").text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lbl), v in after.items() if n == name and want <= lbl) - sum(
        v for (n, lbl), v in before.items() if n == name and want <= lbl)


def test_websocket_turns_are_in_metrics_and_ledger(tmp_path, gpu_sim):
    admin = "lw-ws-admin"
    text = LEDGER_POLICY.format(alice=hashlib.sha256(ALICE_KEY.encode()).hexdigest(),
                                admin=hashlib.sha256(admin.encode()).hexdigest(), gpu=gpu_sim.url)
    with proxy_from_yaml(tmp_path, text) as server:
        before = scrape(server.url)
        with sdk(server, ALICE_KEY).responses.connect() as conn:
            conn.response.create(model="deep", input="one", max_output_tokens=3)
            first = until_done(conn)[-1]
            conn.response.create(model="deep", input="two", max_output_tokens=4, previous_response_id=first.response.id)
            second = until_done(conn)[-1]
        sim = sim_stats(gpu_sim)

        def ready() -> bool:
            after = scrape(server.url)
            return delta(before, after, "laneway_websocket_events_total", kind="turn") == 2

        deadline = time.monotonic() + 10
        while not ready():
            assert time.monotonic() < deadline, "WebSocket turns never reached /metrics"
            time.sleep(0.1)
        after = scrape(server.url)
        labels = dict(route="deep", deployment="codex-gpu", lane="gpu", transport="websocket")
        assert delta(before, after, "laneway_requests_total", status="200", endpoint="responses", **labels) == 2
        assert delta(before, after, "laneway_tokens_total", deployment="codex-gpu", kind="output") == 7
        assert delta(before, after, "laneway_websocket_connections_total", result="accepted") == 1

        headers = {"authorization": f"Bearer {admin}"}
        for _ in range(100):
            body = httpx.get(server.url + "/admin/cost?by=key", headers=headers).json()
            if body["totals"]["tokens"]["requests"] == 2:
                break
            time.sleep(0.05)
        tokens = body["totals"]["tokens"]
        assert (tokens["requests"], tokens["output"]) == (2, 7)
        assert tokens["input"] == sim["input_tokens"] == first.response.usage.input_tokens + second.response.usage.input_tokens
        assert [line["group"] for line in body["lines"]] == ["alice"]


def test_client_rate_limit_refuses_a_turn_with_429_and_the_retry_delay(tmp_path, wafer_sim):
    text = f"""\
version: 1
auth: keys
keys:
  - {{name: alice, sha256: {hashlib.sha256(ALICE_KEY.encode()).hexdigest()}, limits: {{rpm: 1}}}}
deployments:
  - {{name: spark-wafer, provider: cerebras, model: sim-spark, base_url: "{wafer_sim.url}/v1", hardware: wafer}}
"""
    with proxy_from_yaml(tmp_path, text) as server:
        with ws_client.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {ALICE_KEY}"}) as ws:
            for _ in range(2):
                ws.send(json.dumps({"type": "response.create", "model": "spark-wafer", "input": "x",
                                    "max_output_tokens": 1}))
                last = raw_until_done(ws)[-1]
            assert last["type"] == "error" and last["status"] == 429
            assert last["error"]["type"] == "rate_limit_error"
            assert float(last["headers"]["retry-after"]) > 0
    assert sim_stats(wafer_sim)["requests"] == 1


def test_a_turn_larger_than_max_body_bytes_is_refused_before_routing(make_ws_proxy, wafer_sim):
    with make_ws_proxy(max_body=64 * 1024) as server, ws_client.connect(ws_url(server), max_size=None) as ws:
        big = "é" * 40 * 1024  # 40 Ki characters, 80 KiB of UTF-8: over the limit in bytes
        ws.send(json.dumps({"type": "response.create", "model": "fast", "input": big}, ensure_ascii=False))
        [event] = raw_until_done(ws)
        assert (event["status"], event["error"]["code"]) == (413, "request_too_large")
        ws.send(json.dumps({"type": "response.create", "model": "fast", "input": "small", "max_output_tokens": 2}))
        assert raw_until_done(ws)[-1]["type"] == "response.completed"  # the socket stays usable
    assert sim_stats(wafer_sim)["requests"] == 1 and [o.status for o in server.outcomes] == [200]


def test_a_turn_whose_upstream_breaks_off_ends_with_error_then_response_failed(wsproxy, wafer_sim):
    inject(wafer_sim, "drop_mid_stream")
    with ws_client.connect(ws_url(wsproxy)) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "fast", "input": "x", "max_output_tokens": 40}))
        events = raw_until_done(ws)  # up to the error event
        events.append(json.loads(ws.recv(timeout=10)))
    relayed = [e for e in events if e["type"] != "laneway.route"]
    error, failed = relayed[-2:]
    assert (error["type"], error["status"], error["code"]) == ("error", 502, "upstream_stream_error")
    assert [e["sequence_number"] for e in relayed] == list(range(len(relayed)))  # one numbering for the turn
    parsed = TypeAdapter(ResponseStreamEvent).validate_python(failed)
    assert parsed.type == "response.failed" and "broke off" in parsed.response.error.message
    assert parsed.response.id == relayed[0]["response"]["id"]
