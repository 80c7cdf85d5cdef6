"""The simulated provider over HTTP, as OpenAI's clients see it: tool calls, `n`, JSON modes,
OpenAI's 400s, stored responses, rate-limit headers on every answer. Every body is checked
against OpenAI's OpenAPI schemas and the SDK's types in strict mode."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent

from proxy.simulate import TOOL_MARKER, count_input_tokens, get_profile, output_text, serve_in_thread
from proxy.simulate.provider import ClientWatch
from proxy.simulate.server import RunningSimulator
from tests.unit.simulate.spec import conforms, sse_events, strict

pytestmark = pytest.mark.timeout(30)

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]},
                                            "days": {"type": "integer", "minimum": 1}}, "required": ["city", "unit"],
           "additionalProperties": False}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
              {"type": "function", "function": {"name": "shell", "parameters": {
                  "type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                  "required": ["command"]}}}]
RESP_TOOLS = [{"type": "function", "name": t["function"]["name"], "parameters": t["function"]["parameters"]}
              for t in CHAT_TOOLS]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "minLength": 6}, "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                                           "kind": {"anyOf": [{"$ref": "#/$defs/kind"}, {"type": "null"}]}},
          "required": ["name", "age", "tags", "kind"], "additionalProperties": False,
          "$defs": {"kind": {"type": "string", "enum": ["human", "robot"]}}}
RATE_HEADERS = ["x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
                "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]


def client(sim: RunningSimulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)


def post(sim: RunningSimulator, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(sim.base_url + path, json=body)


def chat_ok(data: dict[str, Any]) -> ChatCompletion:
    conforms("CreateChatCompletionResponse", data)
    return strict(ChatCompletion, data)


def response_ok(data: dict[str, Any]) -> Response:
    conforms("Response", data)
    return strict(Response, data)


def events_ok(raw: str) -> list[Any]:
    out = []
    for event in sse_events(raw):
        conforms("ResponseStreamEvent", event)
        out.append(strict(ResponseStreamEvent, event))
    assert [e.sequence_number for e in out] == list(range(len(out)))
    return out


# --- tool calls ----------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_chat_tool_call_non_stream(fresh: RunningSimulator, choice: Any) -> None:
    r = post(fresh, "/chat/completions", {"model": "m", "messages": USER, "tools": CHAT_TOOLS, "tool_choice": choice})
    done = chat_ok(r.json())
    choice0 = done.choices[0]
    assert choice0.finish_reason == "tool_calls" and choice0.message.content is None
    call = choice0.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER)
    assert done.usage.completion_tokens == -(-len(call.function.arguments) // 4)


def test_chat_tool_call_stream_then_tool_output_gets_text(fresh: RunningSimulator) -> None:
    body = {"model": "m", "messages": USER, "tools": CHAT_TOOLS, "tool_choice": {"type": "function", "function": {
        "name": "shell"}}, "stream": True, "stream_options": {"include_usage": True}}
    raw = post(fresh, "/chat/completions", body).text
    chunks = [strict(ChatCompletionChunk, e) for e in sse_events(raw)]
    for event in sse_events(raw):
        conforms("CreateChatCompletionStreamResponse", event)
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.tool_calls[0].function.name == "shell" and first.tool_calls[0].id
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(arguments) == {"command": ["echo", "hi"]}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(chunks) - 3
    call = {"id": first.tool_calls[0].id, "type": "function", "function": {"name": "shell", "arguments": arguments}}
    follow = USER + [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": call["id"], "content": "hi\n"}]
    answer = chat_ok(post(fresh, "/chat/completions", {"model": "m", "messages": follow, "tools": CHAT_TOOLS}).json())
    assert answer.choices[0].message.content == output_text(16) and answer.choices[0].finish_reason == "stop"


def test_auto_calls_a_tool_only_when_the_prompt_asks(fresh: RunningSimulator) -> None:
    c = client(fresh)
    plain = c.chat.completions.create(model="m", messages=USER, tools=CHAT_TOOLS)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason == "stop"
    asked = [{"role": "user", "content": f"please {TOOL_MARKER}=shell now"}]
    called = c.chat.completions.create(model="m", messages=asked, tools=CHAT_TOOLS, tool_choice="auto")
    assert called.choices[0].message.tool_calls[0].function.name == "shell"
    never = c.chat.completions.create(model="m", messages=asked, tools=CHAT_TOOLS, tool_choice="none")
    assert never.choices[0].message.tool_calls is None


def test_responses_function_call_stream_events(fresh: RunningSimulator) -> None:
    body = {"model": "r", "input": f"{TOOL_MARKER} please", "tools": RESP_TOOLS, "stream": True}
    events = events_ok(post(fresh, "/responses", body).text)
    assert [e.type for e in events[:3]] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert events[2].item.type == "function_call" and events[2].item.arguments == "" and events[2].item.status == "in_progress"
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert [e.type for e in events[3 + len(deltas):]] == [
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    done = events[-1].response
    item = done.output[0]
    assert item.type == "function_call" and item.name == "get_weather" and item.arguments == "".join(deltas)
    jsonschema.validate(json.loads(item.arguments), WEATHER)
    assert events[3 + len(deltas)].arguments == item.arguments and done.usage.output_tokens == len(deltas)
    assert done.tools[0].name == "get_weather" and done.tool_choice == "auto"


def test_responses_tool_loop_over_stored_continuation(fresh: RunningSimulator) -> None:
    c = client(fresh)
    first = c.responses.create(model="r", input="x", tools=RESP_TOOLS, tool_choice="required")
    response_ok(first.model_dump(mode="json", exclude_unset=True))
    call = first.output[0]
    assert call.type == "function_call" and call.status == "completed"
    second = c.responses.create(model="r", previous_response_id=first.id, tools=RESP_TOOLS, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text == output_text(16) and second.previous_response_id == first.id
    whole = count_input_tokens({"input": ["x", {"arguments": call.arguments}, {"output": "sunny"}]})
    assert second.usage.input_tokens == whole
    # Codex's stateless loop (store: false, the whole history every time) ends the same way
    history = [{"role": "user", "content": f"{TOOL_MARKER}"}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    third = c.responses.create(model="r", input=history, tools=RESP_TOOLS, store=False)
    assert third.output[0].type == "message" and third.store is False


# --- n and the JSON modes --------------------------------------------------------------------


def test_n_choices(fresh: RunningSimulator) -> None:
    done = chat_ok(post(fresh, "/chat/completions", {"model": "m", "messages": USER, "n": 3, "max_tokens": 4}).json())
    assert [c.index for c in done.choices] == [0, 1, 2] and all(c.message.content == output_text(4) for c in done.choices)
    assert done.usage.completion_tokens == 12
    raw = post(fresh, "/chat/completions", {"model": "m", "messages": USER, "n": 2, "max_tokens": 3, "stream": True}).text
    chunks = [strict(ChatCompletionChunk, e) for e in sse_events(raw)]
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i) for i in (0, 1)]
    assert texts == [output_text(3)] * 2
    assert httpx.get(fresh.root_url + "/sim/stats").json()["output_tokens"] == 12 + 6


def test_json_modes_are_valid_json(fresh: RunningSimulator) -> None:
    schema_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    done = chat_ok(post(fresh, "/chat/completions", {"model": "m", "messages": USER, "response_format": schema_format}).json())
    jsonschema.validate(json.loads(done.choices[0].message.content), PERSON)
    asked = [{"role": "user", "content": "Answer in JSON."}]
    obj = chat_ok(post(fresh, "/chat/completions", {"model": "m", "messages": asked, "response_format": {
        "type": "json_object"}}).json())
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    resp = response_ok(post(fresh, "/responses", {"model": "r", "input": "who?", "text": {"format": fmt}}).json())
    jsonschema.validate(json.loads(resp.output_text), PERSON)
    assert resp.text.format.type == "json_schema"
    raw = post(fresh, "/responses", {"model": "r", "input": "who?", "text": {"format": fmt}, "stream": True}).text
    deltas = [e.delta for e in events_ok(raw) if e.type == "response.output_text.delta"]
    jsonschema.validate(json.loads("".join(deltas)), PERSON)


def test_json_cut_at_the_cap_is_incomplete(fresh: RunningSimulator) -> None:
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON}
    resp = response_ok(post(fresh, "/responses", {"model": "r", "input": "who?", "text": {"format": fmt},
                                                  "max_output_tokens": 3}).json())
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert len(resp.output_text) == 12
    done = chat_ok(post(fresh, "/chat/completions", {"model": "m", "messages": USER, "max_tokens": 2, "response_format": {
        "type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}}).json())
    assert done.choices[0].finish_reason == "length"


# --- OpenAI's 400s -------------------------------------------------------------------------------

BAD = [
    ("/chat/completions", {"messages": "hi"}, "messages", "invalid_type"),
    ("/chat/completions", {}, "messages", "missing_required_parameter"),
    ("/chat/completions", {"messages": []}, "messages", "empty_array"),
    ("/chat/completions", {"messages": USER, "temperature": "hot"}, "temperature", "invalid_type"),
    ("/chat/completions", {"messages": USER, "temperature": 3}, "temperature", "decimal_above_max_value"),
    ("/chat/completions", {"messages": USER, "n": 0}, "n", "integer_below_min_value"),
    ("/chat/completions", {"messages": USER, "max_tokens": -1}, "max_tokens", "integer_below_min_value"),
    ("/chat/completions", {"messages": USER, "max_tokens": True}, "max_tokens", "invalid_type"),
    ("/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ("/chat/completions", {"messages": USER, "tools": {"type": "function"}}, "tools", "invalid_type"),
    ("/chat/completions", {"messages": USER, "tools": [{"type": "function"}]}, "tools[0].function",
     "missing_required_parameter"),
    ("/chat/completions", {"messages": USER, "tools": [{"type": "function", "function": {"name": "a b"}}]},
     "tools[0].function.name", "invalid_value"),
    ("/chat/completions", {"messages": USER, "tools": CHAT_TOOLS, "tool_choice": {"type": "function", "function": {
        "name": "nope"}}}, "tool_choice", None),
    ("/chat/completions", {"messages": USER + [{"role": "tool", "tool_call_id": "c", "content": "x"}]},
     "messages[1].role", None),
    ("/chat/completions", {"messages": USER, "stream_options": {"include_usage": True}}, "stream_options", None),
    ("/chat/completions", {"messages": USER, "response_format": {"type": "yaml"}}, "response_format.type",
     "invalid_value"),
    ("/chat/completions", {"messages": USER, "response_format": {"type": "json_object"}}, "messages", None),
    ("/responses", {}, "input", "missing_required_parameter"),
    ("/responses", {"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
    ("/responses", {"input": ["x"]}, "input[0]", "invalid_type"),
    ("/responses", {"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter"),
    ("/responses", {"input": "x", "max_output_tokens": "many"}, "max_output_tokens", "invalid_type"),
    ("/responses", {"input": "x", "text": {"format": {"type": "json_schema", "name": "p"}}}, "text.format.schema",
     "missing_required_parameter"),
    ("/responses", {"input": "x", "previous_response_id": "resp_nope"}, "previous_response_id",
     "previous_response_not_found"),
    ("/completions", {}, "prompt", "missing_required_parameter"),
    ("/embeddings", {}, "input", "missing_required_parameter"),
]


@pytest.mark.parametrize(("path", "body", "param", "code"), BAD, ids=[f"{p}:{q}:{c}" for p, _, q, c in BAD])
def test_bad_requests_get_openais_400(fresh: RunningSimulator, path: str, body: dict, param: str, code: str | None) -> None:
    r = post(fresh, path, {"model": "m", **body})
    assert r.status_code == 400, r.text
    conforms("ErrorResponse", r.json())
    err = r.json()["error"]
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code), err
    assert sorted(k for k in r.headers if k.startswith("x-ratelimit")) == RATE_HEADERS
    assert httpx.get(fresh.root_url + "/sim/stats").json()["input_tokens"] == 0  # refused before any charge


def test_missing_model_and_the_sdks_own_error(fresh: RunningSimulator) -> None:
    r = post(fresh, "/chat/completions", {"messages": USER})
    assert r.status_code == 400 and r.json()["error"]["message"] == "you must provide a model parameter"
    with pytest.raises(openai.BadRequestError) as info:
        client(fresh).chat.completions.create(model="m", messages=USER, temperature="hot")  # type: ignore[arg-type]
    assert info.value.param == "temperature" and info.value.code == "invalid_type"


# --- Responses objects and the stored-response endpoints ----------------------------------------


def test_response_echoes_the_request(fresh: RunningSimulator) -> None:
    body = {"model": "r", "input": "hi", "instructions": "be brief", "metadata": {"team": "a"}, "temperature": 0.5,
            "top_p": 0.9, "tools": RESP_TOOLS, "tool_choice": "none", "parallel_tool_calls": False,
            "max_output_tokens": 5, "text": {"verbosity": "low"}}
    resp = response_ok(post(fresh, "/responses", body).json())
    assert (resp.instructions, resp.metadata, resp.temperature, resp.top_p, resp.tool_choice,
            resp.parallel_tool_calls, resp.max_output_tokens) == ("be brief", {"team": "a"}, 0.5, 0.9, "none", False, 5)
    assert [t.name for t in resp.tools] == ["get_weather", "shell"] and resp.tools[0].parameters == WEATHER
    assert resp.output[0].content[0].logprobs == [] and resp.usage.input_tokens_details.cache_write_tokens == 0
    assert resp.store is True and resp.text.verbosity == "low" and resp.completed_at is not None


def test_stored_responses_retrieve_list_delete(fresh: RunningSimulator) -> None:
    c = client(fresh)
    made = c.responses.create(model="r", input=[{"role": "user", "content": "one"},
                                                {"role": "user", "content": [{"type": "input_text", "text": "two"}]}])
    got = httpx.get(f"{fresh.base_url}/responses/{made.id}")
    assert got.status_code == 200 and sorted(k for k in got.headers if k.startswith("x-ratelimit")) == RATE_HEADERS
    assert response_ok(got.json()).output_text == made.output_text
    items = httpx.get(f"{fresh.base_url}/responses/{made.id}/input_items").json()
    conforms("ResponseItemList", items)
    listed = [strict(ResponseItem, i) for i in items["data"]]
    assert [i.content[0].text for i in listed] == ["two", "one"] and items["has_more"] is False
    page = c.responses.input_items.list(made.id, order="asc", limit=1)
    assert [i.content[0].text for i in page.data] == ["one"] and page.has_more is True
    cancel = httpx.post(f"{fresh.base_url}/responses/{made.id}/cancel")
    assert cancel.status_code == 400 and cancel.json()["error"]["message"] == "Cannot cancel a synchronous response."
    c.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(made.id)
    with pytest.raises(openai.BadRequestError) as info:
        c.responses.create(model="r", input="again", previous_response_id=made.id)
    assert info.value.code == "previous_response_not_found"
    unstored = c.responses.create(model="r", input="x", store=False)
    assert httpx.get(f"{fresh.base_url}/responses/{unstored.id}").status_code == 404


def test_background_response_then_cancel(fresh: RunningSimulator) -> None:
    with serve_in_thread(get_profile("wafer", ttft_ms=0, tokens_per_s=100)) as slow:
        c = client(slow)
        queued = c.responses.create(model="r", input="x", background=True, max_output_tokens=50)
        assert queued.status == "queued" and queued.background is True
        cancelled = c.responses.cancel(queued.id)
        assert cancelled.status == "cancelled" and c.responses.retrieve(queued.id).status == "cancelled"
        done = c.responses.create(model="r", input="x", background=True, max_output_tokens=2)
        deadline = time.monotonic() + 5
        while (now := c.responses.retrieve(done.id)).status != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert now.output_text == output_text(2) and c.responses.cancel(done.id).status == "completed"


# --- embeddings and rate-limit headers ---------------------------------------------------------


def test_embeddings_base64_as_the_sdk_asks(fresh: RunningSimulator) -> None:
    c = client(fresh)
    decoded = c.embeddings.create(model="e", input=["hello"])  # the SDK asks for base64 and decodes it
    floats = post(fresh, "/embeddings", {"model": "e", "input": ["hello"], "encoding_format": "float"}).json()
    strict(CreateEmbeddingResponse, floats)
    assert decoded.data[0].embedding == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)


def test_cerebras_headers_on_every_answer() -> None:
    with serve_in_thread(get_profile("instant", dialect="cerebras", tpm=100)) as s:
        ok = post(s, "/chat/completions", {"model": "m", "messages": USER, "max_tokens": 5})
        bad = post(s, "/chat/completions", {"model": "m", "messages": "x"})
        limited = post(s, "/chat/completions", {"model": "m", "messages": USER, "max_tokens": 200})
        for r in (ok, bad, limited):
            assert sorted(k for k in r.headers if k.startswith("x-ratelimit")) == [
                "x-ratelimit-limit-requests-day", "x-ratelimit-limit-tokens-minute", "x-ratelimit-remaining-requests-day",
                "x-ratelimit-remaining-tokens-minute", "x-ratelimit-reset-requests-day", "x-ratelimit-reset-tokens-minute"]
        assert (ok.status_code, bad.status_code, limited.status_code) == (200, 400, 429)
        assert ok.headers["x-ratelimit-limit-requests-day"] == "1000000000"
        assert 59 < float(limited.headers["x-ratelimit-reset-tokens-minute"]) <= 60
        assert "." in limited.headers["x-ratelimit-reset-tokens-minute"]


def test_no_provider_headers_still_enforces_limits() -> None:
    """The self-hosted profile (benchmarks' "no headers" upstream) drops the provider's headers, never its limits."""
    with serve_in_thread(get_profile("instant", provider_headers=False, tpm=100)) as s:
        ok = post(s, "/chat/completions", {"model": "m", "messages": USER, "max_tokens": 5})
        limited = post(s, "/chat/completions", {"model": "m", "messages": USER, "max_tokens": 200})
        assert (ok.status_code, limited.status_code) == (200, 429)
        for r in (ok, limited):
            assert not [k for k in r.headers if k.startswith("x-ratelimit") or k in ("x-request-id", "openai-processing-ms")]
        assert int(limited.headers["retry-after"]) >= 1


def test_model_names_are_data_not_templates(fresh: RunningSimulator) -> None:
    body = {"model": "50%d-model", "messages": USER, "max_tokens": 2, "stream": True, "n": 2}
    chunks = [strict(ChatCompletionChunk, e) for e in sse_events(post(fresh, "/chat/completions", body).text)]
    assert {c.model for c in chunks} == {"50%d-model"} and {c.choices[0].index for c in chunks} == {0, 1}


def test_chat_logprobs_when_asked(fresh: RunningSimulator) -> None:
    body = {"model": "m", "messages": USER, "max_tokens": 3, "logprobs": True, "top_logprobs": 2}
    done = chat_ok(post(fresh, "/chat/completions", body).json())
    content = done.choices[0].logprobs.content
    assert [e.token for e in content] == ["tok1 ", "tok2 ", "tok3 "] and content[0].bytes == list(b"tok1 ")
    assert [a.token for a in content[0].top_logprobs] == ["tok1 ", "alt1"] and content[0].logprob == 0.0
    raw = post(fresh, "/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}).text
    for event in sse_events(raw):
        conforms("CreateChatCompletionStreamResponse", event)
    chunks = [strict(ChatCompletionChunk, e) for e in sse_events(raw)]
    streamed = [c.choices[0].logprobs.content[0].token for c in chunks if c.choices and c.choices[0].logprobs]
    assert streamed == ["tok1 ", "tok2 ", "tok3 "]
    assert chat_ok(post(fresh, "/chat/completions", {**body, "logprobs": False}).json()).choices[0].logprobs is None


def test_completions_embeddings_models_conform(fresh: RunningSimulator) -> None:
    done = post(fresh, "/completions", {"model": "m", "prompt": "x", "max_tokens": 2, "n": 2}).json()
    conforms("CreateCompletionResponse", done)
    assert [c["text"] for c in done["choices"]] == [output_text(2)] * 2 and done["usage"]["completion_tokens"] == 4
    conforms("CreateEmbeddingResponse", post(fresh, "/embeddings", {"model": "e", "input": "x"}).json())
    conforms("ListModelsResponse", httpx.get(fresh.base_url + "/models").json())


def test_every_http_request_pays_the_whole_overhead_and_ttft(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTP there is no connection state to continue: a stored previous_response_id, a
    stream or a unary answer all wait the full per-request overhead + TTFT (the shares are for
    continued socket turns only)."""
    waits: list[float | None] = []

    async def pause(self: object, seconds: float | None) -> bool:
        waits.append(None if seconds is None else round(seconds, 9))
        return True

    monkeypatch.setattr(ClientWatch, "pause", pause)
    profile = get_profile("instant", ttft_ms=200, request_overhead_ms=100, continued_overhead_share=0.2,
                          continued_ttft_share=0.5)
    with serve_in_thread(profile) as sim:
        first = httpx.post(sim.base_url + "/responses", json={"model": "m", "input": "hi"}).json()["id"]
        again = httpx.post(sim.base_url + "/responses", json={"model": "m", "input": "more", "stream": True,
                                                              "previous_response_id": first})
        assert again.status_code == 200 and "response.completed" in again.text
    assert waits == [0.3, 0.3]
