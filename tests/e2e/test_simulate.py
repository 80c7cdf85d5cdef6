"""Tests for proxy.simulate, driven through the real openai SDK, raw httpx and litellm."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from proxy.simulate import count_input_tokens, get_profile, output_text, serve_in_thread
from proxy.simulate.ratelimit import go_duration
from proxy.simulate.server import RunningSimulator

pytestmark = pytest.mark.timeout(30)

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there, simulator"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    with serve_in_thread(get_profile("instant")) as running:
        yield running


@pytest.fixture()
def fresh(sim: RunningSimulator) -> RunningSimulator:
    httpx.post(sim.root_url + "/sim/reset").raise_for_status()
    return sim


@pytest.fixture(scope="module")
def paced() -> Iterator[RunningSimulator]:
    """Slow enough (200 tok/s) to disconnect mid-stream reliably."""
    with serve_in_thread(get_profile("wafer", ttft_ms=20, tokens_per_s=200)) as running:
        yield running


def client(sim: RunningSimulator, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0, **kw)


def stats(sim: RunningSimulator) -> dict:
    return httpx.get(sim.root_url + "/sim/stats").json()


# --- profiles and token model ----------------------------------------------------------------


def test_get_profile() -> None:
    assert get_profile("wafer").ttft_ms == 60 and get_profile("gpu").tokens_per_s == 80
    p = get_profile("instant", rpm=5, dialect="cerebras", tpm=None)
    assert (p.rpm, p.tpm, p.dialect, p.instant) == (5, None, "cerebras", True)
    with pytest.raises(ValueError, match="gpu, instant, wafer"):
        get_profile("tpu")
    with pytest.raises(ValueError, match="dialect"):
        get_profile("gpu", dialect="klingon")


def test_token_model() -> None:
    assert count_input_tokens({"messages": [{"role": "user", "content": "abcde"}]}) == 2
    assert count_input_tokens({"prompt": ""}) == 1
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url"}]}]}
    assert count_input_tokens(parts) == 1
    anthropic = {"system": [{"type": "text", "text": "abcd"}], "messages": [{"role": "user", "content": "efgh"}]}
    assert count_input_tokens(anthropic) == 2
    responses = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x" * 9}]}]}
    assert count_input_tokens(responses) == 3
    assert output_text(3) == "tok1 tok2 tok3 "


def test_go_duration() -> None:
    assert [go_duration(s) for s in (0, 0.012, 1, 8.64, 360, 90.5, 3725)] == [
        "0s", "12ms", "1s", "8.64s", "6m0s", "1m30.5s", "1h2m5s"]


# --- OpenAI endpoints through the SDK ---------------------------------------------------------


def test_chat_non_stream_and_stats(fresh: RunningSimulator) -> None:
    resp = client(fresh).chat.completions.create(model="m1", messages=MSGS, max_tokens=7)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-") and resp.model == "m1"
    assert resp.choices[0].message.content == output_text(7) and resp.choices[0].finish_reason == "length"
    expected_in = count_input_tokens({"messages": MSGS})
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (
        expected_in, 7, expected_in + 7)
    resp2 = client(fresh).chat.completions.create(model="m2", messages=MSGS)
    assert resp2.choices[0].finish_reason == "stop" and resp2.usage.completion_tokens == 16
    s = stats(fresh)
    assert (s["requests"], s["input_tokens"], s["output_tokens"]) == (2, 2 * expected_in, 23)
    assert s["by_model"]["m1"] == {"requests": 1, "input_tokens": expected_in, "output_tokens": 7}


def test_chat_stream_include_usage(fresh: RunningSimulator) -> None:
    chunks = list(client(fresh).chat.completions.create(
        model="m", messages=MSGS, max_completion_tokens=5, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    deltas = [c.choices[0].delta.content for c in chunks[1:6]]
    assert deltas == ["tok1 ", "tok2 ", "tok3 ", "tok4 ", "tok5 "]
    assert chunks[6].choices[0].finish_reason == "length" and chunks[6].choices[0].delta.content is None
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert stats(fresh)["output_tokens"] == 5


def test_chat_stream_raw_sse(fresh: RunningSimulator) -> None:
    body = {"model": "m", "messages": MSGS, "max_tokens": 2, "stream": True}
    r = httpx.post(fresh.base_url + "/chat/completions", json=body, headers={"x-request-id": "rq-1"})
    assert r.headers["content-type"].startswith("text/event-stream") and r.headers["x-request-id"] == "rq-1"
    events = r.text.split("\n\n")
    assert events[-2] == "data: [DONE]" and '"usage"' not in r.text and len(events) == 6


def test_completions(fresh: RunningSimulator) -> None:
    c = client(fresh)
    resp = c.completions.create(model="m", prompt="once upon a time", max_tokens=4)
    assert resp.object == "text_completion" and resp.choices[0].text == output_text(4)
    assert resp.usage.prompt_tokens == count_input_tokens({"prompt": "once upon a time"})
    chunks = list(c.completions.create(model="m", prompt="x", max_tokens=3, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == output_text(3)
    assert chunks[-1].usage.completion_tokens == 3
    assert stats(fresh)["output_tokens"] == 7


def test_embeddings(fresh: RunningSimulator) -> None:
    c = client(fresh)
    one = c.embeddings.create(model="e", input="hello")
    many = c.embeddings.create(model="e", input=["hello", "world"])
    assert len(one.data) == 1 and len(one.data[0].embedding) == 8
    assert many.data[0].embedding == one.data[0].embedding != many.data[1].embedding
    assert many.usage.prompt_tokens == 4 and stats(fresh)["input_tokens"] == 2 + 3


def test_models(fresh: RunningSimulator) -> None:
    assert [m.id for m in client(fresh).models.list()] == ["sim-instant"]


def test_responses_non_stream(fresh: RunningSimulator) -> None:
    resp = client(fresh).responses.create(model="r", input="write a haiku", max_output_tokens=6)
    assert resp.id.startswith("resp_") and resp.status == "completed" and resp.output_text == output_text(6)
    assert resp.usage.input_tokens == count_input_tokens({"input": "write a haiku"})
    assert resp.usage.output_tokens == 6 and resp.usage.total_tokens == resp.usage.input_tokens + 6


def test_responses_stream(fresh: RunningSimulator) -> None:
    events = list(client(fresh).responses.create(model="r", input=[{"role": "user", "content": "hi"}],
                                                 max_output_tokens=3, stream=True))
    types = [e.type for e in events]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * 3 + [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.id.startswith("resp_") and done.status == "completed" and done.usage.output_tokens == 3
    assert done.output_text == output_text(3)
    with client(fresh).responses.stream(model="r", input="hi", max_output_tokens=2) as stream:
        final = stream.get_final_response()
    assert final.output_text == output_text(2)
    assert stats(fresh)["output_tokens"] == 5


def test_malformed_json_and_unknown_route(fresh: RunningSimulator) -> None:
    r = httpx.post(fresh.base_url + "/chat/completions", content=b"{nope", headers={"x-request-id": "z"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["x-request-id"] == "z"
    assert httpx.get(fresh.base_url + "/nope").status_code == 404
    with pytest.raises(openai.BadRequestError):
        client(fresh).chat.completions.create(model="m", messages=MSGS, max_tokens=-1)


def test_require_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_REQUIRE_KEY", "sekrit")
    with serve_in_thread(get_profile("instant")) as s:
        with pytest.raises(openai.AuthenticationError):
            client(s).chat.completions.create(model="m", messages=MSGS)
        ok = openai.OpenAI(base_url=s.base_url, api_key="sekrit", max_retries=0)
        assert ok.chat.completions.create(model="m", messages=MSGS).choices[0].message.content
        r = httpx.post(s.base_url + "/messages", headers={"x-api-key": "wrong"},
                       json={"model": "c", "max_tokens": 1, "messages": MSGS[1:]})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = httpx.post(s.base_url + "/messages", headers={"x-api-key": "sekrit"},
                       json={"model": "c", "max_tokens": 1, "messages": MSGS[1:]})
        assert r.status_code == 200


# --- rate limits ------------------------------------------------------------------------------


def test_rate_limit_openai_dialect() -> None:
    with serve_in_thread(get_profile("instant", rpm=2, tpm=1000)) as s:
        c = client(s)
        raw = c.chat.completions.with_raw_response.create(model="m", messages=MSGS, max_tokens=10)
        charged = count_input_tokens({"messages": MSGS}) + 10
        h = raw.headers
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("2", "1")
        assert h["x-ratelimit-remaining-tokens"] == str(1000 - charged)
        assert h["x-ratelimit-reset-requests"].endswith("s") and h["x-ratelimit-reset-tokens"] == "1m0s"
        c.chat.completions.create(model="m", messages=MSGS, max_tokens=10)
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(model="m", messages=MSGS, max_tokens=10)
        err = info.value
        assert err.body["type"] == "rate_limit_error" and err.body["code"] == "rate_limit_exceeded"
        assert int(err.response.headers["retry-after"]) >= 1 and int(err.response.headers["retry-after-ms"]) > 0
        st = stats(s)
        assert (st["requests"], st["rate_limited"], st["input_tokens"]) == (3, 1, 2 * (charged - 10))
        with pytest.raises(openai.RateLimitError):  # bigger than the whole token budget
            httpx.post(s.root_url + "/sim/reset")
            c.chat.completions.create(model="m", messages=MSGS, max_tokens=5000)


def test_rate_limit_cerebras_dialect_and_default_headers(fresh: RunningSimulator) -> None:
    with serve_in_thread(get_profile("instant", rpd=100, tpm=500, dialect="cerebras")) as s:
        h = httpx.post(s.base_url + "/chat/completions", json={"model": "m", "messages": MSGS}).headers
        assert h["x-ratelimit-limit-requests-day"] == "100" and h["x-ratelimit-remaining-requests-day"] == "99"
        assert float(h["x-ratelimit-reset-requests-day"]) > 86000 and h["x-ratelimit-limit-tokens-minute"] == "500"
        assert float(h["x-ratelimit-reset-tokens-minute"]) > 59 and "x-ratelimit-limit-requests" not in h
    h = httpx.post(fresh.base_url + "/chat/completions", json={"model": "m", "messages": MSGS}).headers
    # no limits configured: the provider still advertises its (default) quota, as a real one always does
    assert sorted(k for k in h if k.startswith("x-ratelimit")) == [
        "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("30000", "29999")


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "exc", "status"), [
    ("500", openai.InternalServerError, 500),
    ("503", openai.InternalServerError, 503),
    ("429", openai.RateLimitError, 429),
    ("400", openai.BadRequestError, 400),
])
def test_error_faults(fresh: RunningSimulator, mode: str, exc: type[openai.APIStatusError], status: int) -> None:
    with pytest.raises(exc) as info:
        client(fresh).chat.completions.create(model="m", messages=MSGS, extra_headers={"x-sim-fault": mode})
    assert info.value.status_code == status and "message" in info.value.body
    if mode == "429":
        assert info.value.response.headers["retry-after"] == "1"


def test_queued_faults_and_anthropic_shape(fresh: RunningSimulator) -> None:
    r = httpx.post(fresh.root_url + "/sim/faults", json={"mode": "500", "count": 2})
    assert r.json() == {"queued": 2}
    m = httpx.post(fresh.base_url + "/messages", json={"model": "c", "max_tokens": 2, "messages": MSGS[1:]})
    assert m.status_code == 500 and m.json()["type"] == "error" and m.json()["error"]["type"] == "api_error"
    with pytest.raises(openai.InternalServerError):
        client(fresh).chat.completions.create(model="m", messages=MSGS)
    assert client(fresh).chat.completions.create(model="m", messages=MSGS).choices
    assert httpx.post(fresh.root_url + "/sim/faults", json={"mode": "explode"}).status_code == 400
    assert stats(fresh)["faults"] == 2


def test_hang_and_slow_first_byte(fresh: RunningSimulator) -> None:
    with pytest.raises(openai.APITimeoutError):
        client(fresh, timeout=0.3).chat.completions.create(
            model="m", messages=MSGS, extra_headers={"x-sim-fault": "hang"})
    t0 = time.perf_counter()
    client(fresh).chat.completions.create(model="m", messages=MSGS,
                                          extra_headers={"x-sim-fault": "slow_first_byte:200"})
    assert time.perf_counter() - t0 >= 0.19
    _wait_for(lambda: stats(fresh)["disconnects"] == 1)


@pytest.mark.parametrize("stream", [True, False])
def test_drop_mid_stream(fresh: RunningSimulator, stream: bool) -> None:
    body = {"model": "m", "messages": MSGS, "max_tokens": 10, "stream": stream}
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", fresh.base_url + "/chat/completions", json=body,
                          headers={"x-sim-fault": "drop_mid_stream"}) as r:
            for line in r.iter_lines():
                received.append(line)
    assert not any("[DONE]" in line for line in received)
    if stream:
        assert sum('"content":"tok' in line for line in received) == 5
    assert stats(fresh)["output_tokens"] == 5


def test_drop_mid_stream_sdk_paced(paced: RunningSimulator) -> None:
    httpx.post(paced.root_url + "/sim/reset")
    httpx.post(paced.root_url + "/sim/faults", json={"mode": "drop_mid_stream", "count": 1})
    events = []
    with pytest.raises(httpx.RemoteProtocolError):  # the SDK surfaces the truncated stream as-is
        for ev in client(paced).responses.create(model="r", input="hi", max_output_tokens=8, stream=True):
            events.append(ev.type)
    assert events.count("response.output_text.delta") == 4 and "response.completed" not in events


# --- disconnects and pacing -------------------------------------------------------------------


def _wait_for(cond: callable, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_client_disconnect_counts_only_sent_tokens(paced: RunningSimulator) -> None:
    httpx.post(paced.root_url + "/sim/reset")
    body = {"model": "m", "messages": MSGS, "max_tokens": 200, "stream": True}
    got = 0
    with httpx.stream("POST", paced.base_url + "/chat/completions", json=body) as r:
        for line in r.iter_lines():
            got += '"content":"tok' in line
            if got == 10:
                break
    _wait_for(lambda: stats(paced)["disconnects"] == 1)
    out = stats(paced)["output_tokens"]
    assert 10 <= out < 60, out


def test_pacing(paced: RunningSimulator) -> None:
    c = client(paced)
    t0 = time.perf_counter()
    stream = c.chat.completions.create(model="m", messages=MSGS, max_tokens=40, stream=True)
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    assert 0.015 <= first < 0.15 and 0.2 <= total < 0.6, (first, total)  # 20 ms + 40 tok / 200 tok/s
    t0 = time.perf_counter()
    c.chat.completions.create(model="m", messages=MSGS, max_tokens=20)
    assert 0.11 <= time.perf_counter() - t0 < 0.4


# --- Anthropic Messages -----------------------------------------------------------------------


def test_anthropic_messages_raw(fresh: RunningSimulator) -> None:
    body = {"model": "claude-sim", "max_tokens": 3, "system": "be brief", "messages": MSGS[1:]}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    r = httpx.post(fresh.base_url + "/messages", json=body, headers=headers).json()
    assert r["type"] == "message" and r["content"] == [{"type": "text", "text": output_text(3)}]
    assert r["stop_reason"] == "max_tokens" and r["usage"] == {"input_tokens": count_input_tokens(body),
                                                               "output_tokens": 3}
    text = httpx.post(fresh.base_url + "/messages", json={**body, "stream": True}, headers=headers).text
    names = [block.split("\n")[0].removeprefix("event: ") for block in text.strip().split("\n\n")]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 3 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert '"output_tokens":3' in text and stats(fresh)["output_tokens"] == 6


def test_anthropic_via_litellm(fresh: RunningSimulator) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")

    async def run() -> tuple[str, str]:
        kw = {"model": "anthropic/claude-sim", "api_base": fresh.root_url, "api_key": "x",
              "messages": MSGS, "max_tokens": 4}
        whole = await litellm.acompletion(**kw)
        parts = [c.choices[0].delta.content or "" async for c in await litellm.acompletion(**kw, stream=True)]
        return whole.choices[0].message.content, "".join(parts)

    whole, streamed = asyncio.run(run())
    assert whole == streamed == output_text(4)
