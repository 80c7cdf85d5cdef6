"""Responses requests down to chat parameters, chat answers back up to Responses objects and events."""
from __future__ import annotations

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from proxy.errors import InvalidRequest
from proxy.upstream.responses_via_chat import ResponsesStream, chat_params, response_from_chat
from tests.unit.simulate.spec import conforms

SHELL = {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}}
EVENT = TypeAdapter(ResponseStreamEvent)


def test_codex_conversation_becomes_chat_messages():
    body = {"model": "claude", "instructions": "You are Codex.", "tools": [SHELL, {"type": "web_search"}],
            "tool_choice": "auto", "parallel_tool_calls": False, "max_output_tokens": 64, "temperature": 0.2,
            "reasoning": {"effort": "high"}, "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be safe"}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "run two"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": '{"a":1}'},
                {"type": "function_call", "call_id": "c2", "name": "shell", "arguments": ""},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
            ]}
    params = chat_params(body)
    assert params["messages"] == [
        {"role": "system", "content": "You are Codex."},
        {"role": "system", "content": "be safe"},
        {"role": "user", "content": "run two"},
        {"role": "assistant", "content": "ok", "tool_calls": [  # both calls in the one assistant turn
            {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": '{"a":1}'}},
            {"id": "c2", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]
    assert params["tools"] == [{"type": "function", "function": {"name": "shell", "parameters": SHELL["parameters"]}}]
    assert (params["tool_choice"], params["parallel_tool_calls"]) == ("auto", False)
    assert (params["max_tokens"], params["temperature"]) == (64, 0.2) and "reasoning" not in params


@pytest.mark.parametrize(("choice", "chat"), [
    ("required", "required"), ({"type": "function", "name": "shell"}, {"type": "function", "function": {"name": "shell"}}),
    ({"type": "allowed_tools", "mode": "required", "tools": []}, "required")])
def test_tool_choice(choice, chat):
    assert chat_params({"input": "x", "tools": [SHELL], "tool_choice": choice})["tool_choice"] == chat


def test_only_hosted_tools_send_no_tools_and_no_choice():
    params = chat_params({"input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required"})
    assert "tools" not in params and "tool_choice" not in params


def test_json_schema_format_and_images():
    fmt = {"type": "json_schema", "name": "p", "schema": {"type": "object"}, "strict": True}
    params = chat_params({"text": {"format": fmt}, "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is"}, {"type": "input_image", "image_url": "data:image/png;base64,AA"}]}]})
    assert params["response_format"] == {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    assert params["messages"][0]["content"] == [{"type": "text", "text": "what is"},
                                                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "background": True}, "background"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content"),
])
def test_what_chat_cannot_express_is_a_400(body, param):
    with pytest.raises(InvalidRequest) as caught:
        chat_params(body)
    assert caught.value.param == param


def _validated(events: list[dict]) -> list[str]:
    for event in events:
        conforms("ResponseStreamEvent", event)
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return [e["type"] for e in events]


def test_stream_of_text_then_two_tool_calls():
    stream = ResponsesStream({"model": "claude", "input": "x", "tools": [SHELL]}, "claude-sim")
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me "}}]},
        {"choices": [{"index": 0, "delta": {"content": "look."}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "toolu_a", "function": {"name": "shell", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "toolu_b", "function": {"name": "shell", "arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 7, "cache_read_input_tokens": 4,
                                  "cache_creation_input_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}},
    ]
    events = stream.start() + [e for c in chunks for e in stream.feed(c)] + stream.finish()
    assert _validated(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    done = Response.model_validate(events[-1]["response"])
    assert [i.type for i in done.output] == ["message", "function_call", "function_call"]
    assert done.output_text == "Let me look." and done.output[1].arguments == '{"x":1}' and done.output[2].call_id == "toolu_b"
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [0, 1, 2]
    assert done.usage.input_tokens_details.cached_tokens == 4 and done.usage.input_tokens_details.cache_write_tokens == 3
    assert done.usage.total_tokens == 17 and done.status == "completed"
    assert events[0]["response"]["output"] == [] and events[0]["response"]["status"] == "in_progress"


def test_stream_cut_at_max_output_tokens_is_incomplete():
    stream = ResponsesStream({"model": "claude", "input": "x"}, "claude-sim")
    events = stream.start() + stream.feed({"choices": [{"index": 0, "delta": {"content": "tok1 "}, "finish_reason": "length"}]})
    events += stream.finish()
    _validated(events)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_whole_answer():
    completion = {"model": "claude-sim", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Running.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    body = {"model": "claude", "input": "x", "tools": [SHELL], "user": "u1"}
    raw = response_from_chat(body, completion)
    conforms("Response", raw)
    done = Response.model_validate(raw)
    assert [i.type for i in done.output] == ["message", "function_call"] and done.output[1].call_id == "toolu_1"
    assert done.model == "claude-sim" and done.tools[0].strict is True and done.user == "u1"
    assert done.usage.input_tokens_details.cache_write_tokens == 0 and done.usage.total_tokens == 5
