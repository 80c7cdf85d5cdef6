"""The proxy core through the real openai SDK and raw HTTP: shapes, streams, errors, fallback."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import orjson
import pytest
from openai.types import Model
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import ALICE_KEY
from tests.support import proxy_from_yaml, record_outcomes, simulator

MESSAGES = [{"role": "user", "content": "write a haiku about latency"}]


def sdk(server, key: str = "anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def sim_stats(sim) -> dict:
    return httpx.get(sim.url + "/sim/stats").json()


def inject(sim, mode: str, count: int = 1) -> None:
    httpx.post(sim.url + "/sim/faults", json={"mode": mode, "count": count}).raise_for_status()


def test_chat_non_streaming(proxy, wafer_sim):
    raw = sdk(proxy).chat.completions.with_raw_response.create(model="codex", messages=MESSAGES, max_tokens=7)
    result = raw.parse()
    assert result.choices[0].message.content.split() == [f"tok{i}" for i in range(1, 8)]
    assert result.usage.completion_tokens == 7
    assert raw.headers["x-laneway-deployment"] == "spark-wafer"
    assert raw.headers["x-laneway-lane"] == "wafer"
    assert raw.headers["x-laneway-route-reason"] == "primary"
    assert raw.headers["x-request-id"]
    assert sim_stats(wafer_sim)["by_model"]["sim-spark"]["output_tokens"] == 7  # model rewritten upstream


def test_chat_stream_without_usage_hides_the_usage_chunk(proxy):
    chunks = list(sdk(proxy).chat.completions.create(model="codex", messages=MESSAGES, max_tokens=5, stream=True))
    assert all(chunk.choices for chunk in chunks), "client did not ask for usage: no choices=[] chunk"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.split() == [f"tok{i}" for i in range(1, 6)]


def test_chat_stream_with_include_usage(proxy):
    chunks = list(
        sdk(proxy).chat.completions.create(
            model="codex", messages=MESSAGES, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_chat_stream_ends_with_done(proxy):
    with httpx.stream("POST", proxy.url + "/v1/chat/completions",
                      json={"model": "codex", "messages": MESSAGES, "max_tokens": 3, "stream": True}) as response:
        body = b"".join(response.iter_bytes())
    assert response.headers["content-type"].startswith("text/event-stream")
    assert body.endswith(b"data: [DONE]\n\n")


def test_async_sdk_streams_concurrently(proxy):
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)

        async def one(n: int) -> str:
            stream = await client.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=n, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        try:
            return await asyncio.gather(*(one(n) for n in range(1, 9)))
        finally:
            await client.close()

    texts = asyncio.run(main())
    assert [len(t.split()) for t in texts] == list(range(1, 9))


def test_responses_streaming_and_not(proxy):
    client = sdk(proxy)
    response = client.responses.create(model="codex", input="hello", max_output_tokens=4)
    assert response.id and response.usage.output_tokens == 4
    events = list(client.responses.create(model="codex", input="hello", max_output_tokens=4, stream=True))
    assert events[0].type == "response.created"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.id and completed.response.usage.output_tokens == 4
    assert completed.response.usage.input_tokens_details.cached_tokens == 0


def test_completions_embeddings_and_models(proxy):
    client = sdk(proxy)
    assert client.completions.create(model="codex", prompt="x", max_tokens=3).usage.completion_tokens == 3
    streamed = list(client.completions.create(model="codex", prompt="x", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices).split() == ["tok1", "tok2", "tok3"]
    embedded = client.embeddings.create(model="codex", input=["a", "b"])
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 8
    ids = [m.id for m in client.models.list()]
    assert ids[:5] == ["codex", "fast", "claude", "broken", "dead-then-gpu"]
    assert {"spark-wafer", "sim-spark", "codex-gpu"} <= set(ids)
    for name in ("codex", "spark-wafer", "sim-spark"):
        model = client.models.retrieve(name)
        assert (model.id, model.object) == (name, "model")
    listed = httpx.get(proxy.url + "/v1/models").json()
    assert listed["object"] == "list"
    for data in [*listed["data"], httpx.get(proxy.url + "/v1/models/codex").json()]:
        Model.model_validate(data, strict=True)  # exactly the SDK's Model: id, created, object, owned_by
    assert client.models.retrieve("codex").owned_by == "laneway-route"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.body["code"] == "model_not_found"


def test_the_upstream_request_id_and_rate_limit_headers_reach_the_client(tmp_path):
    with simulator("wafer", ttft_ms=0, tokens_per_s=0, rpm=100, tpm=100_000) as upstream:
        policy = ("version: 1\nauth: open\ndeployments:\n"
                  f"  - {{name: w, provider: openai, model: sim-wafer, base_url: '{upstream.url}/v1'}}\n")
        with proxy_from_yaml(tmp_path, policy) as server:
            response = httpx.post(server.url + "/v1/chat/completions", headers={"x-request-id": "req-abc"},
                                  json={"model": "w", "messages": MESSAGES, "max_tokens": 2})
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-abc"
    assert response.headers["x-upstream-request-id"]  # the provider's id, kept beside Laneway's
    relayed = {k: v for k, v in response.headers.items() if k.startswith("x-ratelimit-")}
    assert relayed["x-ratelimit-limit-requests"] == "100" and int(relayed["x-ratelimit-remaining-requests"]) == 99
    assert {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests"} <= relayed.keys()


def test_concrete_model_name_routes_to_its_deployment(proxy):
    raw = sdk(proxy).chat.completions.with_raw_response.create(model="sim-codex", messages=MESSAGES, max_tokens=1)
    assert raw.headers["x-laneway-deployment"] == "codex-gpu"


def test_request_id_is_passed_through(proxy, wafer_sim):
    response = httpx.post(proxy.url + "/v1/chat/completions", headers={"x-request-id": "trace-42"},
                          json={"model": "fast", "messages": MESSAGES, "max_tokens": 1})
    assert response.headers["x-request-id"] == "trace-42"


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_malformed_json_is_400(proxy):
    response = httpx.post(proxy.url + "/v1/chat/completions", content=b'{"model": "codex", ',
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert _error(response)["type"] == "invalid_request_error"
    response = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
    assert response.status_code == 400 and _error(response)["param"] == "model"


def test_unknown_model_is_404_listing_valid_names(proxy):
    with pytest.raises(openai.NotFoundError) as info:
        sdk(proxy).chat.completions.create(model="gpt-nope", messages=MESSAGES)
    error = info.value.body
    assert error["code"] == "model_not_found" and "codex" in error["message"] and "fast" in error["message"]


def test_unknown_path_is_404_in_openai_shape(proxy):
    response = httpx.get(proxy.url + "/v1/nothing-here")
    assert response.status_code == 404 and _error(response)["code"] == "not_found"


def test_keys_mode_requires_a_valid_key(make_proxy):
    with make_proxy(auth="keys") as server:
        response = httpx.post(server.url + "/v1/chat/completions", json={"model": "codex", "messages": MESSAGES})
        assert response.status_code == 401 and _error(response)["code"] == "missing_api_key"
        with pytest.raises(openai.AuthenticationError) as info:
            sdk(server, key="wrong-key").chat.completions.create(model="codex", messages=MESSAGES)
        assert "wrong-key" not in str(info.value)
        ok = sdk(server, key=ALICE_KEY).chat.completions.create(model="codex", messages=MESSAGES, max_tokens=1)
        assert ok.usage.completion_tokens == 1
        for path in ("/v1/models", "/v1/models/codex"):  # listing models needs a key like every other call
            assert httpx.get(server.url + path).status_code == 401
            assert httpx.get(server.url + path, headers={"authorization": "Bearer wrong-key"}).status_code == 401
            assert httpx.get(server.url + path, headers={"authorization": f"Bearer {ALICE_KEY}"}).status_code == 200


def test_body_over_limit_is_413(make_proxy):
    with make_proxy(max_body=2048) as server:
        big = [{"role": "user", "content": "x" * 4096}]
        response = httpx.post(server.url + "/v1/chat/completions", json={"model": "codex", "messages": big})
        assert response.status_code == 413 and _error(response)["code"] == "request_too_large"

        def chunked():
            yield b'{"model": "codex", "messages": [{"role": "user", "content": "'
            for _ in range(8):
                yield b"y" * 1024
            yield b'"}]}'

        response = httpx.post(server.url + "/v1/chat/completions", content=chunked())
        assert response.status_code == 413


def test_upstream_timeout_is_504(make_proxy, wafer_sim):
    with make_proxy(first_byte_s=0.3) as server:
        inject(wafer_sim, "hang")
        started = time.monotonic()
        response = httpx.post(server.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES})
        assert response.status_code == 504 and _error(response)["code"] == "upstream_timeout"
        assert time.monotonic() - started < 3


def test_upstream_connect_failure_is_502(proxy):
    response = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "broken", "messages": MESSAGES})
    assert response.status_code == 502 and _error(response)["code"] == "upstream_unavailable"
    assert "127.0.0.1" not in _error(response)["message"], "upstream addresses stay private"


def test_upstream_client_error_is_relayed_faithfully(proxy, wafer_sim):
    inject(wafer_sim, "400")
    direct = httpx.post(wafer_sim.url + "/v1/chat/completions", headers={"x-sim-fault": "400"},
                        json={"model": "sim-spark", "messages": MESSAGES})
    response = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "codex", "messages": MESSAGES})
    assert response.status_code == 400
    assert response.json() == direct.json()
    assert response.headers["x-laneway-deployment"] == "spark-wafer", "4xx is the client's: no fallback"


def test_fallback_on_5xx_429_and_connect_error(proxy, wafer_sim):
    for mode in ("500", "429"):
        inject(wafer_sim, mode)
        raw = sdk(proxy).chat.completions.with_raw_response.create(model="codex", messages=MESSAGES, max_tokens=2)
        assert raw.headers["x-laneway-deployment"] == "codex-gpu"
        assert raw.headers["x-laneway-route-reason"] == f"fallback:spark-wafer={mode}"
    raw = sdk(proxy).chat.completions.with_raw_response.create(model="dead-then-gpu", messages=MESSAGES, max_tokens=2)
    assert raw.headers["x-laneway-route-reason"] == "fallback:dead=connect"


def test_last_candidate_error_is_relayed_with_retry_after(proxy, wafer_sim):
    inject(wafer_sim, "429")
    response = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES})
    assert response.status_code == 429 and response.headers["retry-after"]
    assert _error(response)["type"] == "rate_limit_error"


def test_mid_stream_drop_raises_in_the_sdk(proxy, wafer_sim):
    inject(wafer_sim, "drop_mid_stream")
    with pytest.raises(openai.APIError) as info:
        for _ in sdk(proxy).chat.completions.create(model="fast", messages=MESSAGES, max_tokens=40, stream=True):
            pass
    assert "broke off" in str(info.value)


def test_mid_stream_drop_on_responses_ends_with_well_formed_error_and_failed_events(proxy, wafer_sim):
    inject(wafer_sim, "drop_mid_stream")
    with httpx.stream("POST", proxy.url + "/v1/responses",
                      json={"model": "fast", "input": "x", "max_output_tokens": 40, "stream": True}) as response:
        events = [orjson.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    parsed = [TypeAdapter(ResponseStreamEvent).validate_python(event) for event in events]  # every event, strictly typed
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    error, failed = parsed[-2:]
    assert (error.type, error.code) == ("error", "upstream_stream_error") and "broke off" in error.message
    assert failed.type == "response.failed" and "broke off" in failed.response.error.message
    assert failed.response.id == parsed[0].response.id  # the response the stream had created


def test_client_disconnect_cancels_upstream(proxy, gpu_sim):
    with httpx.stream("POST", proxy.url + "/v1/chat/completions",
                      json={"model": "codex-gpu", "messages": MESSAGES, "max_tokens": 4000, "stream": True}) as response:
        for line in response.iter_lines():
            if "tok3" in line:
                break
    deadline = time.monotonic() + 5
    while sim_stats(gpu_sim)["disconnects"] < 1:
        assert time.monotonic() < deadline, "upstream never saw the cancel"
        time.sleep(0.05)
    assert sim_stats(gpu_sim)["output_tokens"] < 4000


def test_anthropic_deployment_through_litellm(proxy, gpu_sim):
    client = sdk(proxy)
    result = client.chat.completions.create(model="claude", messages=MESSAGES, max_tokens=6)
    assert result.choices[0].message.content.split() == [f"tok{i}" for i in range(1, 7)]
    assert result.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model="claude", messages=MESSAGES, max_tokens=6, stream=True))
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).split() == [f"tok{i}" for i in range(1, 7)]
    assert sim_stats(gpu_sim)["by_model"]["claude-sim"]["output_tokens"] == 12


class _FloodingUpstream:
    """An OpenAI-shaped upstream that streams chat chunks as fast as the proxy takes them, forever,
    counting the bytes the proxy accepted: a relay that buffers for a stalled client shows up here."""

    CHUNK = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n'

    def __init__(self) -> None:
        import socket
        import threading
        self.sent = 0
        self.closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        piece = self.CHUNK % (b"x" * 900)
        framed = b"%x\r\n%s\r\n" % (len(piece), piece) * 16
        try:
            while True:
                conn.sendall(framed)
                self.sent += len(framed)
        except OSError:
            self.closed.set()
        finally:
            conn.close()
            self._listener.close()


def test_a_client_that_stops_reading_stalls_the_upstream_and_its_hang_up_cancels_it(tmp_path):
    """Backpressure through the relay: with the client not reading, the proxy stops reading the
    upstream (what the upstream got rid of stays at socket-buffer scale, and stops growing) instead
    of buffering the stream in memory; when the client then hangs up, the upstream exchange is cut
    and the request is settled as a client disconnect."""
    import socket
    upstream = _FloodingUpstream()
    policy = ("version: 1\nauth: open\ndeployments:\n"
              f"  - {{name: f, provider: openai, model: flood, base_url: '{upstream.url}/v1'}}\n")
    with record_outcomes(proxy_from_yaml(tmp_path, policy)) as server:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        body = orjson.dumps({"model": "f", "messages": MESSAGES, "stream": True})
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                       b"content-length: %d\r\n\r\n%s" % (len(body), body))
        assert client.recv(4096).startswith(b"HTTP/1.1 200")  # then it stops reading
        time.sleep(1.5)
        stalled = upstream.sent
        time.sleep(1.0)
        assert upstream.sent - stalled < 256 * 1024, "the proxy kept reading for a client that does not"
        assert stalled < 32 * 1024 * 1024  # socket buffers and a bounded queue, not the stream
        client.close()
        assert upstream.closed.wait(5), "the upstream exchange outlived the client"
        deadline = time.monotonic() + 5
        while not server.outcomes:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    outcome = server.outcomes[0]
    assert (outcome.status, outcome.error_code) == (499, "client_disconnected")
    assert outcome.output_tokens > 0  # what was relayed is counted


@pytest.mark.parametrize("http", ["edge", "httptools"])
def test_sdk_streams_alike_whether_the_server_offers_the_direct_client_stream_or_only_asgi_send(tmp_path, http):
    """The relay writes chunks straight to the connection under Laneway's edge protocol and through
    plain ASGI ``send`` under any other server: the openai SDK sees the same stream, usage and end,
    and the call is settled with the usage and first-token time either way."""
    with simulator("wafer", ttft_ms=20, tokens_per_s=2000, batch_ms=0) as upstream:
        policy = ("version: 1\nauth: open\ndeployments:\n"
                  f"  - {{name: w, provider: openai, model: sim-wafer, base_url: '{upstream.url}/v1'}}\n")
        proxy = record_outcomes(proxy_from_yaml(tmp_path, policy))
        if http == "httptools":
            proxy.server.config.http = "httptools"
        with proxy as server:
            stream = sdk(server).chat.completions.create(model="w", messages=MESSAGES, max_tokens=64, stream=True,
                                                         stream_options={"include_usage": True})
            chunks = list(stream)
            plain = list(sdk(server).chat.completions.create(model="w", messages=MESSAGES, max_tokens=8, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.count("tok") == 64 and chunks[-1].usage.completion_tokens == 64
    assert all(c.choices for c in plain)  # the usage-only chunk it did not ask for is held back
    first, second = server.outcomes
    assert (first.status, first.output_tokens, second.output_tokens) == (200, 64, 8)
    assert first.first_token_at is not None and first.first_token_at - first.started >= 0.015


def test_stream_batch_ms_relays_a_paced_stream_a_few_tokens_a_write_and_all_of_it(tmp_path):
    """server.stream_batch_ms: a stream paced one token per write (1000 tok/s) reaches the client
    in far fewer writes, with every token, in order, and its usage; the first token is not held."""
    with simulator("wafer", ttft_ms=5, tokens_per_s=1000, batch_ms=0) as sim:
        rest = (f"deployments:\n  - {{name: paced, provider: openai, model: sim-spark, base_url: '{sim.url}/v1'}}\n"
                "routes:\n  - {name: fast, candidates: [paced]}\n")
        body = {"model": "fast", "messages": MESSAGES, "max_tokens": 120, "stream": True,
                "stream_options": {"include_usage": True}}
        seen = {}
        for ms in (0, 20):
            policy = f"version: 1\nauth: open\nserver: {{stream_batch_ms: {ms}}}\n" + rest
            with proxy_from_yaml(tmp_path, policy, name=f"p{ms}.yaml") as proxy:
                with httpx.Client(timeout=30) as client, client.stream("POST", proxy.url + "/v1/chat/completions",
                                                                      json=body) as response:
                    started, reads, first = time.monotonic(), [], None
                    for raw in response.iter_raw():
                        first = first or time.monotonic() - started
                        reads.append(raw)
                events = [orjson.loads(line[6:]) for line in b"".join(reads).split(b"\n\n")
                          if line.startswith(b"data: {")]
                content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
                seen[ms] = (len(reads), content, events[-1]["usage"]["completion_tokens"], first)
    (unbatched, content0, used0, _), (batched, content20, used20, first20) = seen[0], seen[20]
    assert content20 == content0 and used20 == used0 == 120
    assert batched * 3 < unbatched, (batched, unbatched)
    assert first20 < 0.5  # the first chunk is relayed as it comes (the simulator's TTFT is 5 ms)
