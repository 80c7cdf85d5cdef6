"""Persistent upstream sockets: deployments with `websocket: true` run Responses turns —
from HTTP and WebSocket clients alike — over pooled sockets to the simulator's Responses
WebSocket mode, falling back to HTTP when no socket can take the turn."""
from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import websockets.sync.client as ws_client

from proxy.simulate.text import count_input_tokens
from tests.support import proxy_from_yaml, record_outcomes, simulator

POLICY = """\
version: 1
auth: open
deployments:
  - {{name: ws-wafer, provider: cerebras, model: sim-spark, base_url: "{wafer}/v1", hardware: wafer,
      websocket: true, websocket_max_connections: {cap}}}
  - {{name: codex-gpu, provider: openai, model: sim-codex, base_url: "{gpu}/v1", hardware: gpu}}
routes:
  - {{name: codex, candidates: [ws-wafer, codex-gpu]}}
  - {{name: fast, candidates: [ws-wafer]}}
"""


@pytest.fixture
def ws_sim():
    """A simulator of our own: these tests switch its WebSocket tier off and on."""
    with simulator("wafer", ttft_ms=5, tokens_per_s=4000) as server:
        yield server


@pytest.fixture
def make_upstream_proxy(tmp_path, ws_sim, gpu_sim):
    def make(cap: int = 4):
        return record_outcomes(proxy_from_yaml(tmp_path, POLICY.format(wafer=ws_sim.url, gpu=gpu_sim.url, cap=cap)))

    return make


@pytest.fixture
def proxy(make_upstream_proxy):
    with make_upstream_proxy() as server:
        yield server


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def pool(server):
    return server.app.state.runtime.router.targets["ws-wafer"].pool


def wait_for(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def stream_text(server, model: str = "fast", n: int = 4) -> tuple[str, object]:
    events = list(sdk(server).responses.create(model=model, input="hello", max_output_tokens=n, stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    return text, events[-1]


def test_http_turns_ride_one_persistent_upstream_socket(proxy, ws_sim):
    sock = ws_sim.app.websocket
    for n in (3, 4, 5):
        text, last = stream_text(proxy, n=n)
        assert text.split() == [f"tok{i}" for i in range(1, n + 1)]
        assert last.type == "response.completed" and last.response.usage.output_tokens == n
    assert (sock.connections, sock.turns) == (1, 3)
    assert pool(proxy).stats.turns == 3 and pool(proxy).stats.connects == 1
    # the proxy's ledger still sees exact usage from the socket's stream
    assert [o.output_tokens for o in proxy.outcomes] == [3, 4, 5] and all(o.usage_reported for o in proxy.outcomes)


def test_non_streaming_responses_and_other_endpoints(proxy, ws_sim):
    result = sdk(proxy).responses.create(model="fast", input="hello", max_output_tokens=3)
    assert result.output_text.split() == ["tok1", "tok2", "tok3"] and result.usage.output_tokens == 3
    assert ws_sim.app.websocket.turns == 1
    chat = sdk(proxy).chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert chat.choices[0].message.content.split() == ["tok1", "tok2"]
    assert ws_sim.app.websocket.turns == 1, "chat completions are not Responses turns: HTTP"


def test_client_websocket_turns_continue_over_the_upstream_socket(proxy, ws_sim):
    with sdk(proxy).responses.connect() as conn:
        conn.response.create(model="fast", input="first", max_output_tokens=2)
        first = _until_done(conn)
        conn.response.create(model="fast", input="second", max_output_tokens=2,
                             previous_response_id=first[-1].response.id)
        second = _until_done(conn)
    assert second[-1].type == "response.completed"
    expanded = {"input": ["first", "tok1 tok2 ", "second"]}
    assert second[-1].response.usage.input_tokens == count_input_tokens(expanded)
    assert ws_sim.app.websocket.turns == 2 and ws_sim.app.websocket.connections == 1


def _until_done(conn) -> list:
    events = []
    for event in conn:
        events.append(event)
        if event.type in ("response.completed", "error"):
            return events
    raise AssertionError("closed early")


def test_lost_upstream_socket_falls_back_to_http_without_losing_the_turn(proxy, ws_sim):
    sock = ws_sim.app.websocket
    assert stream_text(proxy)[0].split() == ["tok1", "tok2", "tok3", "tok4"]
    assert sock.turns == 1
    sock.down = True  # the provider drops live sockets and refuses new ones
    try:
        text, last = stream_text(proxy, n=6)
        assert text.split() == [f"tok{i}" for i in range(1, 7)] and last.response.usage.output_tokens == 6
        stats = pool(proxy).stats
        assert stats.http_fallbacks == 1 and stats.drops == 1 and stats.connect_failures == 1
        assert sock.turns == 1 and pool(proxy).open == 0
        assert proxy.outcomes[-1].status == 200 and proxy.outcomes[-1].deployment == "ws-wafer"
    finally:
        sock.down = False
    time.sleep(0.6)  # past the first reconnect backoff (0.5 s)
    assert stream_text(proxy, n=2)[0].split() == ["tok1", "tok2"]
    assert sock.turns == 2 and pool(proxy).stats.connects == 2, "reconnected after the backoff"


def test_socket_drop_during_prefill_reruns_the_turn_unnoticed(proxy, ws_sim):
    """The socket dies after response.created but before any output: those events were held
    back, so the turn is re-run (on a fresh socket here) and the client sees one clean response."""
    httpx.post(ws_sim.url + "/sim/faults", json={"mode": "drop_mid_stream"}).raise_for_status()
    events = list(sdk(proxy).responses.create(model="fast", input="x", max_output_tokens=1, stream=True))
    kinds = [e.type for e in events]
    assert kinds.count("response.created") == 1 and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "tok1 "
    stats = pool(proxy).stats
    assert (stats.drops, stats.connects, stats.turns) == (1, 2, 1)
    assert ws_sim.app.websocket.turns == 2 and proxy.outcomes[-1].status == 200


def test_socket_drop_after_output_started_is_reported_in_band(proxy, ws_sim):
    httpx.post(ws_sim.url + "/sim/faults", json={"mode": "drop_mid_stream"}).raise_for_status()
    with httpx.stream("POST", proxy.url + "/v1/responses",
                      json={"model": "fast", "input": "x", "max_output_tokens": 20, "stream": True}) as response:
        body = b"".join(response.iter_bytes())
    assert b"tok1 " in body and b"response.completed" not in body
    assert b'"code":"upstream_stream_error"' in body
    assert proxy.outcomes[-1].status == 502 and pool(proxy).open == 0
    assert stream_text(proxy, n=2)[0].split() == ["tok1", "tok2"]  # a fresh socket serves the next turn


def test_connection_cap_sends_overflow_over_http(make_upstream_proxy, ws_sim, gpu_sim):
    with make_upstream_proxy(cap=1) as server:
        results = []

        def one() -> None:
            results.append(stream_text(server, n=200)[0])

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 3 and all(len(r.split()) == 200 for r in results)
        assert ws_sim.app.websocket.peak_open == 1
        stats = pool(server).stats
        assert stats.turns + stats.http_fallbacks == 3 and stats.http_fallbacks >= 1 and stats.connects == 1


def test_upstream_error_event_lets_the_router_fall_back(proxy, ws_sim, gpu_sim):
    httpx.post(ws_sim.url + "/sim/faults", json={"mode": "429"}).raise_for_status()
    raw = sdk(proxy).responses.with_raw_response.create(model="codex", input="x", max_output_tokens=2)
    assert raw.headers["x-laneway-route-reason"] == "fallback:ws-wafer=429"
    assert raw.parse().output_text.split() == ["tok1", "tok2"]
    assert pool(proxy).open == 1 and pool(proxy).idle, "an error event leaves the socket usable"


def test_client_drop_closes_the_upstream_socket(proxy, ws_sim):
    url = "ws" + proxy.url[4:] + "/v1/responses"
    ws = ws_client.connect(url)
    ws.send(json.dumps({"type": "response.create", "model": "fast", "input": "x", "max_output_tokens": 8000}))
    while json.loads(ws.recv(timeout=10))["type"] != "response.output_text.delta":
        pass
    ws.socket.close()
    wait_for(lambda: ws_sim.app.websocket.open == 0 and proxy.outcomes)
    assert proxy.outcomes[-1].status == 499
    assert httpx.get(ws_sim.url + "/sim/stats").json()["disconnects"] == 1
    assert pool(proxy).open == 0


# --- continuing a client conversation on its pinned upstream socket ------------------------


def _ws_turn(conn, **fields) -> object:
    conn.response.create(max_output_tokens=2, **fields)
    last = _until_done(conn)[-1]
    assert last.type == "response.completed", last
    return last.response


def test_client_turns_continue_upstream_with_only_the_new_items(proxy, ws_sim):
    sock = ws_sim.app.websocket
    with sdk(proxy).responses.connect() as conn:
        first = _ws_turn(conn, model="fast", input="first")
        second = _ws_turn(conn, model="fast", input="second", previous_response_id=first.id)
        assert sock.last_request["previous_response_id"] == first.id
        assert sock.last_request["input"] == [{"type": "message", "role": "user", "content": "second"}]
        third = _ws_turn(conn, model="fast", input=[{"role": "user", "content": "third"}],
                         previous_response_id=second.id)
        assert sock.last_request["previous_response_id"] == second.id
        assert sock.last_request["input"] == [{"role": "user", "content": "third"}]
    # the provider bills the whole conversation, and so does the ledger
    whole = {"input": ["first", "tok1 tok2 ", "second", "tok1 tok2 ", "third"]}
    assert third.usage.input_tokens == count_input_tokens(whole)
    assert proxy.outcomes[-1].input_tokens == count_input_tokens(whole) and proxy.outcomes[-1].usage_reported
    stats = pool(proxy).stats
    assert (sock.continued, stats.continued, stats.continue_misses, stats.connects) == (2, 2, 0, 1)
    wait_for(lambda: pool(proxy).idle, 2.0)  # the conversation ended: its socket is back in the pool


def test_dropped_upstream_socket_falls_back_to_full_context(proxy, ws_sim):
    sock = ws_sim.app.websocket
    with sdk(proxy).responses.connect() as conn:
        first = _ws_turn(conn, model="fast", input="first")
        sock.down = True  # the pinned socket dies at the next turn and no new one can open
        try:
            second = _ws_turn(conn, model="fast", input="second", previous_response_id=first.id)
        finally:
            sock.down = False
        assert second.usage.input_tokens == count_input_tokens({"input": ["first", "tok1 tok2 ", "second"]})
        stats = pool(proxy).stats
        assert (stats.drops, stats.http_fallbacks) == (1, 1) and sock.continued == 0
        time.sleep(0.6)  # past the reconnect backoff: a fresh socket, which must get the full context
        third = _ws_turn(conn, model="fast", input="third", previous_response_id=second.id)
        assert "previous_response_id" not in sock.last_request
        assert [i["content"] for i in sock.last_request["input"]][-1] == "third"
        assert len(sock.last_request["input"]) == 5
        _ws_turn(conn, model="fast", input="fourth", previous_response_id=third.id)
        assert sock.last_request["previous_response_id"] == third.id, "pinned again after the reconnect"
        assert len(sock.last_request["input"]) == 1
    assert proxy.outcomes[-1].input_tokens == count_input_tokens(
        {"input": ["first", "tok1 tok2 ", "second", "tok1 tok2 ", "third", "tok1 tok2 ", "fourth"]})


def test_previous_response_not_found_upstream_is_retried_with_full_context(proxy, ws_sim):
    sock = ws_sim.app.websocket
    with sdk(proxy).responses.connect() as conn:
        first = _ws_turn(conn, model="fast", input="first")
        sock.forget()  # the provider lost the connection's memory (e.g. restarted)
        events = []
        conn.response.create(model="fast", input="second", max_output_tokens=2, previous_response_id=first.id)
        events = _until_done(conn)
    assert [e.type for e in events if e.type == "error"] == []
    assert events[-1].response.usage.input_tokens == count_input_tokens({"input": ["first", "tok1 tok2 ", "second"]})
    assert "previous_response_id" not in sock.last_request and len(sock.last_request["input"]) == 3
    stats = pool(proxy).stats
    assert (stats.continued, stats.continue_misses, stats.http_fallbacks, stats.connects) == (1, 1, 0, 1)
    assert proxy.outcomes[-1].status == 200


def test_turn_served_by_another_deployment_resumes_upstream_in_full(proxy, ws_sim, gpu_sim):
    sock = ws_sim.app.websocket
    with sdk(proxy).responses.connect() as conn:
        first = _ws_turn(conn, model="fast", input="first")
        second = _ws_turn(conn, model="codex-gpu", input="second", previous_response_id=first.id)
        assert proxy.outcomes[-1].deployment == "codex-gpu"  # this turn went to the HTTP-only lane
        _ws_turn(conn, model="fast", input="third", previous_response_id=second.id)
        assert proxy.outcomes[-1].deployment == "ws-wafer"
        assert "previous_response_id" not in sock.last_request and len(sock.last_request["input"]) == 5
    assert sock.connections == 1, "the conversation kept its socket through the other lane's turn"


def test_an_upstream_socket_silent_past_idle_s_ends_the_turn_with_a_timeout(tmp_path):
    """Gaps between events are watched per turn: a stall after the first output ends the turn
    in-band (502, upstream_stream_error) and the stalled socket is dropped, not pooled."""
    policy = """\
version: 1
auth: open
deployments:
  - {{name: ws-slow, provider: cerebras, model: sim-spark, base_url: "{url}/v1", hardware: wafer,
      websocket: true, timeouts: {{connect_s: 1, first_byte_s: 5, idle_s: 0.3}}}}
routes:
  - {{name: slow, candidates: [ws-slow]}}
"""
    with simulator("wafer", ttft_ms=5, tokens_per_s=1) as sim:  # a second between tokens
        with record_outcomes(proxy_from_yaml(tmp_path, policy.format(url=sim.url))) as proxy:
            with ws_client.connect("ws" + proxy.url[4:] + "/v1/responses") as ws:
                ws.send(json.dumps({"type": "response.create", "model": "slow", "input": "x", "max_output_tokens": 5}))
                started = time.monotonic()
                events = []
                while not events or events[-1]["type"] not in ("error", "response.completed"):
                    events.append(json.loads(ws.recv(timeout=10)))
                waited = time.monotonic() - started
            assert events[-1]["type"] == "error" and events[-1]["status"] == 502, events[-1]
            assert "timeout" in events[-1]["error"]["message"]
            assert 0.3 < waited < 3, "five tokens a second apart would take 5 s"
            assert [e for e in events if e["type"] == "response.output_text.delta"], "the stall came after output"
            wait_for(lambda: proxy.outcomes)
            assert proxy.outcomes[-1].error_code == "upstream_stream_error"
            target = proxy.app.state.runtime.router.targets["ws-slow"]
            assert target.pool.open == 0 and not target.pool.idle


# --- continuing an HTTP client's resent conversation on a pooled upstream socket ----------------

TOOLS = [{"type": "function", "name": "shell", "description": "Run a command.", "strict": False,
          "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}]
AGENT = {"instructions": "You are a careful coding agent.", "tools": TOOLS, "store": False, "max_output_tokens": 3}


def _http_turn(client: openai.OpenAI, items: list, **fields):
    """One Responses turn over HTTP with the whole conversation, streamed: the final response."""
    params = {**AGENT, **fields}
    events = list(client.responses.create(model="fast", input=items, stream=True, **params))
    assert events[-1].type == "response.completed", events[-1]
    assert events[0].response.previous_response_id is None, "the client never chained; its answer must not say so"
    return events[-1].response


def _shape(response) -> dict:
    """A response as the client sees it, minus what differs between any two sends (ids, clock)."""
    data = response.model_dump(mode="json", exclude_unset=True)
    data.pop("id"), data.pop("created_at", None), data.pop("completed_at", None)
    for item in data["output"]:
        item.pop("id", None)
    return data


def _plain(items: list) -> list:
    """Items as they went over the wire (the SDK's output objects encoded as the SDK encodes them)."""
    return [i.model_dump(mode="json", exclude_unset=True) if hasattr(i, "model_dump") else i for i in items]


def _full_send(sim, items: list, **fields):
    """The same turn sent straight to the provider over HTTP: what Laneway must answer."""
    direct = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
    return direct.responses.create(model="sim-spark", input=items, **{**AGENT, **fields})


def test_http_conversation_continues_on_the_pooled_socket_with_only_the_new_items(proxy, ws_sim):
    sock, client = ws_sim.app.websocket, sdk(proxy)
    items: list = [{"role": "user", "content": "fix the tests"}]
    first = _http_turn(client, items)
    assert "previous_response_id" not in sock.last_request and sock.last_request["input"] == _plain(items)
    for n, new in enumerate(("now run them", "and commit"), start=1):
        previous = first
        items = items + first.output + [{"role": "user", "content": new}]  # the SDK echoes the output objects
        first = _http_turn(client, items)
        assert sock.last_request["previous_response_id"] == previous.id
        assert sock.last_request["input"] == [{"role": "user", "content": new}], "only the new item went upstream"
        assert sock.last_request["instructions"] == AGENT["instructions"] and sock.last_request["tools"] == TOOLS
        assert sock.continued == n
        full = _full_send(ws_sim, items)
        assert _shape(first) == _shape(full), "the answer a full send gets, usage included"
    # billed for the whole conversation, as the provider reports it
    assert proxy.outcomes[-1].input_tokens == full.usage.input_tokens and proxy.outcomes[-1].usage_reported
    stats = pool(proxy).stats
    assert (stats.continued, stats.continue_misses, stats.connects, stats.http_fallbacks) == (2, 0, 1, 0)


def test_non_streaming_http_turns_continue_too_and_answer_like_a_full_send(proxy, ws_sim):
    client = sdk(proxy)
    items: list = [{"role": "user", "content": "hello"}]
    first = client.responses.create(model="fast", input=items, **AGENT)
    items = items + first.output + [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "more"}]}]
    second = client.responses.create(model="fast", input=items, **AGENT)
    assert ws_sim.app.websocket.last_request["previous_response_id"] == first.id
    assert second.previous_response_id is None
    assert _shape(second) == _shape(_full_send(ws_sim, items))


@pytest.mark.parametrize("change", ["instructions", "tools", "earlier item", "other model params", "store"])
def test_anything_but_new_items_sends_the_full_context(proxy, ws_sim, change):
    sock, client = ws_sim.app.websocket, sdk(proxy)
    items: list = [{"role": "user", "content": "fix the tests"}]
    first = _http_turn(client, items)
    items = items + first.output + [{"role": "user", "content": "again"}]
    fields: dict = {}
    if change == "instructions":
        fields["instructions"] = AGENT["instructions"] + " Be brief."
    elif change == "tools":
        fields["tools"] = [{**TOOLS[0], "description": "Run a shell command."}]
    elif change == "earlier item":
        items[0] = {"role": "user", "content": "fix the tests!"}
    elif change == "other model params":
        fields["temperature"] = 0.5
    else:
        fields["store"] = True  # a stored continuation would name a response the client never saw
    second = _http_turn(client, items, **fields)
    assert "previous_response_id" not in sock.last_request and sock.last_request["input"] == _plain(items)
    assert sock.continued == 0 and pool(proxy).stats.continued == 0
    assert _shape(second) == _shape(_full_send(ws_sim, items, **fields))


def test_key_order_and_whitespace_do_not_break_the_continuation(proxy, ws_sim):
    sock = ws_sim.app.websocket
    items: list = [{"role": "user", "content": "fix the tests"}]
    first = _http_turn(sdk(proxy), items)
    echoed = [{k: v for k, v in reversed(list(item.model_dump(mode="json", exclude_unset=True).items()))}
              for item in first.output]
    body = {"model": "fast", "stream": False, "input": items + echoed + [{"content": "again", "role": "user"}],
            **{k: AGENT[k] for k in reversed(list(AGENT))}}
    raw = json.dumps(body, indent=3, separators=(" ,  ", " :  "))  # valid JSON, spaced and reordered
    answer = httpx.post(proxy.url + "/v1/responses", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 200 and answer.json()["previous_response_id"] is None
    assert sock.last_request["previous_response_id"] == first.id and len(sock.last_request["input"]) == 1


def test_a_value_that_differs_only_in_a_string_s_whitespace_is_a_different_conversation(proxy, ws_sim):
    items: list = [{"role": "user", "content": "fix the tests"}]
    first = _http_turn(sdk(proxy), items)
    echoed = [item.model_dump(mode="json", exclude_unset=True) for item in first.output]
    echoed[0]["content"][0]["text"] += " "
    _http_turn(sdk(proxy), items + echoed + [{"role": "user", "content": "again"}])
    assert "previous_response_id" not in ws_sim.app.websocket.last_request


def test_a_provider_that_forgot_the_socket_s_turn_gets_the_full_context_on_it(proxy, ws_sim):
    sock, client = ws_sim.app.websocket, sdk(proxy)
    items: list = [{"role": "user", "content": "fix the tests"}]
    first = _http_turn(client, items)
    sock.forget()  # the provider restarted, or the turn landed on a replica that never saw it
    items = items + first.output + [{"role": "user", "content": "again"}]
    second = _http_turn(client, items)
    assert "previous_response_id" not in sock.last_request and sock.last_request["input"] == _plain(items)
    assert _shape(second) == _shape(_full_send(ws_sim, items))
    stats = pool(proxy).stats
    assert (stats.continued, stats.continue_misses, stats.connects, stats.http_fallbacks) == (1, 1, 1, 0)
    third = _http_turn(client, items + second.output + [{"role": "user", "content": "once more"}])
    assert sock.last_request["previous_response_id"] == second.id, "the full re-send is remembered in turn"
    assert third.usage.input_tokens > second.usage.input_tokens


def test_an_upstream_socket_dropped_between_turns_means_a_full_resend_elsewhere(proxy, ws_sim):
    sock, client = ws_sim.app.websocket, sdk(proxy)
    items: list = [{"role": "user", "content": "fix the tests"}]
    first = _http_turn(client, items)
    sock.down = True  # the remembered socket dies at the next turn; no new one opens
    try:
        items = items + first.output + [{"role": "user", "content": "again"}]
        second = _http_turn(client, items)
    finally:
        sock.down = False
    assert _shape(second) == _shape(_full_send(ws_sim, items)), "over HTTP, with the whole conversation"
    stats = pool(proxy).stats
    assert (stats.continued, stats.drops, stats.http_fallbacks) == (1, 1, 1) and sock.continued == 0
    assert proxy.outcomes[-1].status == 200
    time.sleep(0.6)  # past the reconnect backoff: a fresh socket knows nothing and gets everything
    items = items + second.output + [{"role": "user", "content": "once more"}]
    third = _http_turn(client, items)
    assert "previous_response_id" not in sock.last_request and sock.last_request["input"] == _plain(items)
    _http_turn(client, items + third.output + [{"role": "user", "content": "last"}])
    assert sock.last_request["previous_response_id"] == third.id, "continued again on the fresh socket"


def test_two_requests_of_one_conversation_in_flight_never_share_a_continuation(make_upstream_proxy, ws_sim):
    with make_upstream_proxy(cap=4) as server:
        sock, client = ws_sim.app.websocket, sdk(server)
        items: list = [{"role": "user", "content": "fix the tests"}]
        long = {"max_output_tokens": 400}  # 0.1 s a turn: the four overlap
        first = _http_turn(client, items, **long)
        items = items + first.output + [{"role": "user", "content": "again"}]
        barrier, answers = threading.Barrier(4), []

        def one() -> None:
            barrier.wait()
            answers.append(_http_turn(client, items, **long))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(answers) == 4
        full = _shape(_full_send(ws_sim, items, **long))
        assert all(_shape(a) == full for a in answers)
        assert sock.continued == 1 and pool(server).stats.continued == 1, "one socket remembered the turn: one claim"
        assert all(o.status == 200 for o in server.outcomes)


def test_two_conversations_keep_their_own_sockets(proxy, ws_sim):
    sock, client = ws_sim.app.websocket, sdk(proxy)
    a: list = [{"role": "user", "content": "conversation a"}]
    b: list = [{"role": "user", "content": "conversation b"}]
    ra, rb = _http_turn(client, a), _http_turn(client, b)
    for turn in range(2):
        a = a + ra.output + [{"role": "user", "content": f"a{turn}"}]
        ra = _http_turn(client, a)
        b = b + rb.output + [{"role": "user", "content": f"b{turn}"}]
        rb = _http_turn(client, b)
    assert sock.continued == 4 and sock.connections == 2


@pytest.mark.parametrize("hostile", ["many items", "deep item", "bad items", "huge string"])
def test_hostile_inputs_never_fail_the_proxy(proxy, ws_sim, hostile):
    items: list = [{"role": "user", "content": "fix the tests"}]
    first = _http_turn(sdk(proxy), items)
    items = items + [o.model_dump(mode="json", exclude_unset=True) for o in first.output]
    if hostile == "many items":
        items += [{"role": "user", "content": str(i)} for i in range(30_000)]
    elif hostile == "deep item":
        deep: object = "x"
        for _ in range(400):
            deep = [deep]
        items.append({"role": "user", "content": deep})
    elif hostile == "bad items":
        items += [17, None, "text", [], {"type": "nonsense"}]
    else:
        items.append({"role": "user", "content": "é\u2028\x00" * 200_000})
    answer = httpx.post(proxy.url + "/v1/responses", json={"model": "fast", "input": items, **AGENT}, timeout=60)
    assert answer.status_code in (200, 400), answer.text
    assert "error" in answer.json() if answer.status_code == 400 else answer.json()["status"] == "completed"
    assert _http_turn(sdk(proxy), [{"role": "user", "content": "still fine"}]).status == "completed"
