"""proxy/simulate/validate.py: the 400s OpenAI (and Anthropic) answer, called directly: wording, param
and code; booleans are not numbers; unknown fields pass; tool names come back for tool_choice checks."""
from __future__ import annotations

import random

import pytest

from proxy.simulate import validate
from proxy.simulate.validate import InvalidRequest

USER = [{"role": "user", "content": "hi"}]


def refused(check, body: dict) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check(body)
    return info.value


def test_wrong_types_are_named_as_openai_names_them() -> None:
    error = refused(validate.chat, {"model": "m", "messages": USER, "temperature": "hot"})
    assert (error.message, error.param, error.code) == (
        "Invalid type for 'temperature': expected a decimal, but got a string instead.", "temperature", "invalid_type")
    for value, kind in ((True, "a boolean"), ([1], "an array"), ({"a": 1}, "an object"), (1.5, "a decimal")):
        error = refused(validate.chat, {"model": "m", "messages": USER, "n": value})
        assert error.message.endswith(f"but got {kind} instead.") and error.param == "n"


@pytest.mark.parametrize("key, value, code", [
    ("max_tokens", True, "invalid_type"),          # a boolean is no integer, though Python says it is
    ("max_tokens", 0.0, "invalid_type"),
    ("max_tokens", -1, "integer_below_min_value"),
    ("temperature", False, "invalid_type"),
    ("temperature", -0.1, "decimal_below_min_value"),
    ("temperature", 2.0001, "decimal_above_max_value"),
    ("stream", 1, "invalid_type"),
])
def test_ranges_and_types_of_chat_fields(key, value, code) -> None:
    error = refused(validate.chat, {"model": "m", "messages": USER, key: value})
    assert (error.param, error.code) == (key, code)


def test_a_missing_or_non_string_model_is_refused_first() -> None:
    assert refused(validate.chat, {"messages": "not even a list"}).message == "you must provide a model parameter"
    assert refused(validate.responses, {"model": 7, "input": "x"}).param == "model"


def test_unknown_fields_pass_because_clients_send_what_the_spec_does_not_list_yet() -> None:
    validate.chat({"model": "m", "messages": USER, "prompt_cache_key": "k", "some_future_field": {"x": [1]}})
    validate.responses({"model": "m", "input": "x", "client_metadata": {"a": "b"}, "include": ["reasoning.encrypted_content"]})


def test_unsupported_values_list_the_supported_ones() -> None:
    error = refused(validate.chat, {"model": "m", "messages": [{"role": "robot", "content": "x"}]})
    assert error.param == "messages[0].role" and error.code == "invalid_value"
    assert error.message.startswith("Invalid value: 'robot'. Supported values are: 'system', ")
    assert error.message.endswith(", and 'developer'.")


def test_responses_input_may_be_absent_only_when_something_else_gives_it() -> None:
    assert refused(validate.responses, {"model": "m"}).code == "missing_required_parameter"
    validate.responses({"model": "m", "previous_response_id": "resp_1"})
    validate.responses({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": "ok"}]})
    assert refused(validate.responses, {"model": "m", "input": 3}).param == "input"
    assert refused(validate.responses, {"model": "m", "input": [{"role": "user"}]}).param == "input[0].content"
    assert refused(validate.responses, {"model": "m", "input": "x", "truncation": "sometimes"}).param == "truncation"


def test_tool_names_are_returned_for_the_tool_choice_check() -> None:
    chat_tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    assert validate.chat_tool_names({"tools": chat_tools}) == ["get_weather"]
    responses_tools = [{"type": "function", "name": "shell", "parameters": {"type": "object"}},
                       {"type": "namespace", "name": "fs", "tools": [{"type": "function", "name": "read"}]}]
    assert validate.responses_tool_names({"tools": responses_tools}) == ["shell", "read"]
    error = refused(validate.chat, {"model": "m", "messages": USER, "tools": chat_tools,
                                    "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert error.param == "tool_choice"
    assert refused(validate.chat, {"model": "m", "messages": USER,
                                   "tools": [{"type": "function", "function": {"name": "a" * 65}}]}).code == "invalid_value"


def test_embeddings_refuse_an_empty_input_and_an_unknown_encoding() -> None:
    assert refused(validate.embeddings, {"model": "m", "input": []}).param == "input"
    assert refused(validate.embeddings, {"model": "m", "input": "x", "encoding_format": "hex"}).param == "encoding_format"
    assert refused(validate.embeddings, {"model": "m", "input": "x", "dimensions": 0}).code == "integer_below_min_value"
    validate.embeddings({"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 256})


@pytest.mark.parametrize("body, message", [
    ({"max_tokens": 5, "messages": USER}, "model: Field required"),
    ({"model": "c", "max_tokens": 0, "messages": USER}, "max_tokens: Input should be a valid integer greater than or equal to 1"),
    ({"model": "c", "max_tokens": True, "messages": USER}, "max_tokens: Input should be a valid integer greater than or equal to 1"),
    ({"model": "c", "max_tokens": 5, "messages": "hi"}, "messages: Input should be a valid list"),
    ({"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     "messages.0.role: Input should be 'user' or 'assistant'"),
])
def test_anthropic_messages_are_refused_in_anthropics_wording(body, message) -> None:
    error = refused(validate.messages, body)
    assert error.message == message and error.param is None and error.code is None


_HOSTILE = [None, True, 0, -1, 2**70, 1e308, -0.0, "", "user", "tool", "function", [], {}, [{}], {"a": 1},
            {"role": "user"}, [{"role": "user", "content": "hi"}], {"type": "function"}]
_FIELDS = ["model", "messages", "input", "max_tokens", "max_completion_tokens", "max_output_tokens", "stream", "tools",
           "tool_choice", "temperature", "n", "response_format", "text", "instructions", "role", "content", "type",
           "tool_calls", "tool_call_id", "function", "name", "arguments", "parameters", "encoding_format", "prompt"]


def _hostile(rnd, depth: int = 0):
    roll = rnd.random()
    if depth < 4 and roll < 0.1:  # a list of message- or item-shaped objects with hostile members
        return [{key: _hostile(rnd, depth + 2) for key in rnd.sample(_FIELDS, rnd.randint(1, 4))}
                for _ in range(rnd.randint(1, 3))]
    if depth < 4 and roll < 0.2:
        return {rnd.choice(_FIELDS): _hostile(rnd, depth + 1) for _ in range(rnd.randint(0, 4))}
    if depth < 4 and roll < 0.35:
        return [_hostile(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    return rnd.choice(_HOSTILE)


@pytest.mark.parametrize("check", [validate.chat, validate.completions, validate.responses, validate.embeddings,
                                   validate.messages])
def test_hostile_bodies_get_a_400_never_a_crash(check) -> None:
    """A provider answers any JSON object with 200 or 400; a crash here would be a simulated 500 that
    no real provider gives (a dict as a message's role used to raise TypeError: unhashable)."""
    rnd = random.Random(7)
    for _ in range(3000):
        body = {key: _hostile(rnd) for key in rnd.sample(_FIELDS, rnd.randint(1, 6))}
        if rnd.random() < 0.5:
            body[rnd.choice(("messages", "input"))] = [{"role": _hostile(rnd, 2), "content": _hostile(rnd, 2)}]
        body.setdefault("model", "m")
        try:
            check(body)
        except InvalidRequest:
            pass
