"""The ``claude`` route (Anthropic Messages API through litellm) on OpenAI's wire.

Every body and event Laneway writes for it is checked against OpenAI's OpenAPI schemas (the
vendored subset) and strictly against the openai SDK's types: it must parse, and carry no member
the type does not know (litellm's own fields included).
"""
from __future__ import annotations

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from tests.e2e.test_openai_http import sim_stats
from tests.unit.simulate.spec import conforms

STREAM_EVENT = TypeAdapter(ResponseStreamEvent)
SHELL = {"type": "function", "name": "shell", "description": "Run a command.",
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                        "required": ["command"]}}


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="anything", max_retries=0)


# Members OpenAI's API sends that the SDK's types do not declare.
SENT_BY_OPENAI = {"Response": {"store"}}


def strict(value: BaseModel) -> BaseModel:
    """``value`` and everything in it hold only members its type declares (or OpenAI sends)."""
    extra = set(value.model_extra or {}) - SENT_BY_OPENAI.get(type(value).__name__, set())
    assert not extra, f"{type(value).__name__} has unknown members {sorted(extra)}"
    for name in type(value).model_fields:
        _strict_all(getattr(value, name))
    return value


def _strict_all(value) -> None:
    if isinstance(value, BaseModel):
        strict(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _strict_all(v)
    elif isinstance(value, dict):
        for v in value.values():
            _strict_all(v)


def sse_data(proxy, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", proxy.url + path, json=body, timeout=10) as response:
        assert response.status_code == 200, response.read()
        raw = b"".join(response.iter_bytes())
    datas = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    return [orjson.loads(d) for d in datas if d != b"[DONE]"]


def checked_events(events: list[dict]) -> list:
    for event in events:
        conforms("ResponseStreamEvent", event)
    parsed = [strict(STREAM_EVENT.validate_python(e)) for e in events]
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    return parsed


TEXT_ORDER = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
              "response.output_text.delta", "response.output_text.done", "response.content_part.done",
              "response.output_item.done"]


def _squeeze(types: list[str]) -> list[str]:
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]


def test_responses_http_whole_and_streamed(proxy, gpu_sim):
    client = sdk(proxy)
    whole = client.responses.create(model="claude", input="hello", instructions="be brief", max_output_tokens=5)
    strict(Response.model_validate(whole.model_dump()))
    raw = httpx.post(proxy.url + "/v1/responses", json={"model": "claude", "input": "hello", "max_output_tokens": 5},
                     timeout=10).json()
    conforms("Response", raw)
    strict(Response.model_validate(raw))
    assert whole.output_text.split() == [f"tok{i}" for i in range(1, 6)]
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert whole.usage.output_tokens == 5 and whole.usage.input_tokens_details.cache_write_tokens == 0

    events = checked_events(sse_data(proxy, "/v1/responses", {"model": "claude", "input": "hi", "stream": True}))
    assert _squeeze([e.type for e in events]) == TEXT_ORDER + ["response.completed"]
    done = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert done.output_text == text and text.split() == [f"tok{i}" for i in range(1, 17)]  # the model's own length
    assert done.usage.output_tokens == 16 and done.status == "completed" and done.incomplete_details is None
    assert events[0].response.id == done.id and events[0].response.status == "in_progress"

    streamed = list(client.responses.create(model="claude", input="hi", max_output_tokens=3, stream=True))
    assert streamed[-1].type == "response.incomplete" and streamed[-1].response.output_text.split() == ["tok1", "tok2", "tok3"]


def test_responses_tool_round_trip(proxy, gpu_sim):
    client = sdk(proxy)
    question = {"role": "user", "content": "list files sim:tool"}
    first = client.responses.create(model="claude", input=[question], tools=[SHELL], max_output_tokens=50)
    strict(Response.model_validate(first.model_dump()))
    [call] = first.output
    assert call.type == "function_call" and call.name == "shell" and call.call_id.startswith("toolu_")
    assert orjson.loads(call.arguments) == {"command": ["echo", "hi"]}
    assert first.status == "completed"
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "hi\n"}
    second = client.responses.create(model="claude", input=[question, call.model_dump(exclude_none=True), output],
                                     tools=[SHELL], max_output_tokens=4)
    assert second.output[0].type == "message" and second.output_text.split() == ["tok1", "tok2", "tok3", "tok4"]

    events = checked_events(sse_data(proxy, "/v1/responses", {"model": "claude", "input": [question], "tools": [SHELL],
                                                              "stream": True, "max_output_tokens": 50}))
    assert _squeeze([e.type for e in events]) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [done_args] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done_args.arguments == arguments == events[-1].response.output[0].arguments
    assert orjson.loads(arguments) == {"command": ["echo", "hi"]}


def test_responses_websocket_turns(proxy, gpu_sim):
    with sdk(proxy).responses.connect() as conn:
        conn.response.create(model="claude", input="first", max_output_tokens=2)
        first = _turn(conn)
        conn.response.create(model="claude", input="second", max_output_tokens=2,
                             previous_response_id=first[-1].response.id)
        second = _turn(conn)
    assert _squeeze([e.type for e in first]) == TEXT_ORDER + ["response.incomplete"]
    assert second[-1].response.output_text.split() == ["tok1", "tok2"]
    # the second turn reached the provider with the whole conversation: its 3 messages
    assert second[-1].response.usage.input_tokens > first[-1].response.usage.input_tokens
    assert sim_stats(gpu_sim)["by_model"]["claude-sim"]["requests"] == 2


def _turn(conn) -> list:
    events = []
    while True:
        data = orjson.loads(conn.recv_bytes())
        if data["type"] == "laneway.route":
            continue
        conforms("ResponseStreamEvent", data)
        events.append(strict(STREAM_EVENT.validate_python(data)))
        if data["type"] in ("response.completed", "response.incomplete", "error"):
            assert [e.sequence_number for e in events] == list(range(len(events)))
            return events


def test_responses_continuation_without_conversation_is_refused(proxy, gpu_sim):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(proxy).responses.create(model="claude", input="more", previous_response_id="resp_elsewhere")
    assert caught.value.code == "previous_response_not_found" and caught.value.param == "previous_response_id"
    assert sim_stats(gpu_sim)["requests"] == 0


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream_is_spec_correct(proxy, gpu_sim, include_usage):
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    chunks = sse_data(proxy, "/v1/chat/completions", body)
    for chunk in chunks:
        conforms("CreateChatCompletionStreamResponse", chunk)
        strict(ChatCompletionChunk.model_validate(chunk))
        for choice in chunk["choices"]:
            assert "logprobs" in choice and "finish_reason" in choice
    choice_chunks = [c for c in chunks if c["choices"]]
    assert [c["choices"][0]["finish_reason"] for c in choice_chunks] == [None] * (len(choice_chunks) - 1) + ["length"]
    if include_usage:
        *rest, last = chunks
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4
        assert all("usage" in c and c["usage"] is None for c in rest)
    else:
        assert all(c["choices"] and "usage" not in c for c in chunks)


def test_chat_whole_and_tool_call_are_spec_correct(proxy, gpu_sim):
    tool = {"type": "function", "function": {k: v for k, v in SHELL.items() if k != "type"}}
    raw = httpx.post(proxy.url + "/v1/chat/completions", timeout=10, json={
        "model": "claude", "messages": [{"role": "user", "content": "go sim:tool"}], "tools": [tool], "max_tokens": 50}).json()
    conforms("CreateChatCompletionResponse", raw)
    strict(ChatCompletion.model_validate(raw))
    [choice] = raw["choices"]
    assert choice["logprobs"] is None and choice["message"]["refusal"] is None
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["tool_calls"][0]["function"]["name"] == "shell"
    chunks = sse_data(proxy, "/v1/chat/completions", {
        "model": "claude", "messages": [{"role": "user", "content": "go sim:tool"}], "tools": [tool], "max_tokens": 50,
        "stream": True})
    for chunk in chunks:
        conforms("CreateChatCompletionStreamResponse", chunk)
        strict(ChatCompletionChunk.model_validate(chunk))
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["id"].startswith("toolu_") and calls[0]["function"]["name"] == "shell"
    assert all("id" not in c and "name" not in c["function"] for c in calls[1:])
    assert orjson.loads("".join(c["function"]["arguments"] for c in calls)) == {"command": ["echo", "hi"]}
