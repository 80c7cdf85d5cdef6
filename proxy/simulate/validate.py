"""Request validation with the 400s OpenAI answers: same message, ``param`` and ``code``.

Only what a client can get wrong in a way OpenAI refuses is checked (types, ranges, required
fields, roles, tool definitions, tool-message order); unknown fields pass, because clients such
as Codex send fields the public spec does not list yet.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from .text import prompt_text

_CHAT_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_PLAIN_ROLES = frozenset(("system", "user", "developer", "assistant"))
_RESPONSES_ROLES = ("assistant", "system", "developer", "user")
_FORMATS = ("text", "json_object", "json_schema")
_TOOL_CHOICES = ("none", "auto", "required")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class InvalidRequest(ValueError):
    """A request OpenAI refuses with 400 invalid_request_error."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _wrong_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
                          param, "invalid_type")


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _one_of(param: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
        raise InvalidRequest(f"Invalid value: '{value}'. Supported values are: {listed}.", param, "invalid_value")


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(key, "a decimal", value)
    if value < lo:
        raise InvalidRequest(f"Invalid '{key}': decimal below minimum value. Expected a value >= {lo:g}, "
                             f"but got {value:g} instead.", key, "decimal_below_min_value")
    if value > hi:
        raise InvalidRequest(f"Invalid '{key}': decimal above maximum value. Expected a value <= {hi:g}, "
                             f"but got {value:g} instead.", key, "decimal_above_max_value")


def _integer(body: dict[str, Any], key: str, lo: int, hi: int | None = None) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(key, "an integer", value)
    if value < lo:
        raise InvalidRequest(f"Invalid '{key}': integer below minimum value. Expected a value >= {lo}, "
                             f"but got {value} instead.", key, "integer_below_min_value")
    if hi is not None and value > hi:
        raise InvalidRequest(f"Invalid '{key}': integer above maximum value. Expected a value <= {hi}, "
                             f"but got {value} instead.", key, "integer_above_max_value")


def _typed(body: dict[str, Any], key: str, kind: type | tuple[type, ...], expected: str) -> None:
    value = body.get(key)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise _wrong_type(key, expected, value)


def _model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter")
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)


def _metadata(body: dict[str, Any], key: str) -> None:
    metadata = body[key]
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise _wrong_type(key, "an object", metadata)
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise _wrong_type(f"{key}.{k}", "a string", v)


def _stream_options(body: dict[str, Any]) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise _wrong_type("stream_options", "an object", options)
    if body.get("stream") is not True:
        raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                             "stream_options")


def _required(body: dict[str, Any], key: str, kinds: tuple[type, ...], expected: str) -> Any:
    value = body.get(key)
    if value is None:
        raise missing(key)
    if not isinstance(value, kinds):
        raise _wrong_type(key, expected, value)
    return value


def _array(body: dict[str, Any], key: str, required: bool = True) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        if required:
            raise missing(key)
        return None
    if not isinstance(value, list):
        raise _wrong_type(key, "an array", value)
    return value


def _function_name(param: str, name: Any) -> None:
    if name is None:
        raise missing(param)
    if not isinstance(name, str):
        raise _wrong_type(param, "a string", name)
    if not _NAME.match(name):
        raise InvalidRequest(f"Invalid '{param}': string does not match pattern. Expected a string that matches "
                             "the pattern '^[a-zA-Z0-9_-]+$'.", param, "invalid_value")


def _parameters(param: str, schema: Any) -> None:
    if schema is not None and not isinstance(schema, dict):
        raise _wrong_type(param, "an object", schema)


def _object(param: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _wrong_type(param, "an object", value)
    return value


def _tools(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(param path, tool, type) of each entry of ``tools``, checked to be a typed object."""
    for i, tool in enumerate(_array(body, "tools", required=False) or ()):
        p = f"tools[{i}]"
        tool = _object(p, tool)
        kind = tool.get("type")
        if kind is None:
            raise missing(f"{p}.type")
        if not isinstance(kind, str):
            raise _wrong_type(f"{p}.type", "a string", kind)
        yield p, tool, kind


def _declared(p: str, spec: dict[str, Any], kind: str) -> str:
    """The name a function/custom tool declares, its name and schema checked."""
    _function_name(f"{p}.name", spec.get("name"))
    if kind == "function":
        _parameters(f"{p}.parameters", spec.get("parameters"))
    return spec["name"]


def chat_tool_names(body: dict[str, Any]) -> list[str]:
    """Validate chat ``tools``; the function names they declare."""
    names = []
    for p, tool, kind in _tools(body):
        _one_of(f"{p}.type", kind, ("function", "custom"))
        if tool.get(kind) is None:
            raise missing(f"{p}.{kind}")
        names.append(_declared(f"{p}.{kind}", _object(f"{p}.{kind}", tool[kind]), kind))
    return names


def responses_tool_names(body: dict[str, Any]) -> list[str]:
    """Validate Responses ``tools`` (function tools, also inside namespaces); the function names."""
    names = []
    for p, tool, kind in _tools(body):
        if kind in ("function", "custom"):
            names.append(_declared(p, tool, kind))
        elif kind == "namespace":
            for j, inner in enumerate(_array(tool, "tools") or ()):
                names.append(_declared(f"{p}.tools[{j}]", _object(f"{p}.tools[{j}]", inner), "function"))
    return names


def _tool_choice(body: dict[str, Any], names: list[str], chat: bool) -> None:
    choice = body.get("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str):
        _one_of("tool_choice", choice, _TOOL_CHOICES)
        if choice == "required" and not names:
            raise InvalidRequest("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
                                 "specified.", "tool_choice")
        return
    choice = _object("tool_choice", choice)
    if choice.get("type") not in ("function", "custom"):
        return
    spec = choice.get(choice["type"]) if chat else choice
    name = spec.get("name") if isinstance(spec, dict) else None
    if name not in names:
        raise InvalidRequest(f"Invalid value for 'tool_choice': tool choice '{name}' not found in 'tools' parameter.",
                             "tool_choice")


def _format(param: str, fmt: Any) -> None:
    fmt = _object(param, fmt)
    kind = fmt.get("type")
    if kind is None:
        raise missing(f"{param}.type")
    _one_of(f"{param}.type", kind, _FORMATS)


def _chat_format(body: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    _format("response_format", fmt)
    if fmt["type"] == "json_object" and "json" not in prompt_text({"messages": body.get("messages")}).lower():
        raise InvalidRequest("'messages' must contain the word 'json' in some form, to use 'response_format' of "
                             "type 'json_object'.", "messages")
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if spec is None:
            raise missing("response_format.json_schema")
        spec = _object("response_format.json_schema", spec)
        _function_name("response_format.json_schema.name", spec.get("name"))
        _parameters("response_format.json_schema.schema", spec.get("schema"))


def _responses_format(body: dict[str, Any]) -> None:
    text = body.get("text")
    if text is None:
        return
    fmt = _object("text", text).get("format")
    if fmt is None:
        return
    _format("text.format", fmt)
    if fmt["type"] == "json_object" and "json" not in prompt_text(body).lower():
        raise InvalidRequest("Response input messages must contain the word 'json' in some form to use "
                             "'text.format' of type 'json_object'.", "input")
    if fmt["type"] == "json_schema":
        _function_name("text.format.name", fmt.get("name"))
        if fmt.get("schema") is None:
            raise missing("text.format.schema")
        _parameters("text.format.schema", fmt["schema"])


def _chat_messages(body: dict[str, Any]) -> None:
    messages = _array(body, "messages")
    if not messages:
        raise InvalidRequest("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
                             "empty array instead.", "messages", "empty_array")
    awaiting: list[str] = []  # tool_call ids of the last assistant message not yet answered
    for i, message in enumerate(messages):
        if (not awaiting and type(message) is dict and type(message.get("role")) is str
                and message["role"] in _PLAIN_ROLES
                and type(message.get("content")) is str and "tool_calls" not in message):
            continue  # the common case, checked in one go
        p = f"messages[{i}]"
        message = _object(p, message)
        role = message.get("role")
        if role is None:
            raise missing(f"{p}.role")
        _one_of(f"{p}.role", role, _CHAT_ROLES)
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _wrong_type(f"{p}.content", "one of a string or array of objects", content)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is None:
                raise missing(f"{p}.tool_call_id")
            if call_id not in awaiting:
                raise InvalidRequest("Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                                     "message with 'tool_calls'.", f"{p}.role")
            awaiting.remove(call_id)
            continue
        if awaiting:
            raise InvalidRequest("An assistant message with 'tool_calls' must be followed by tool messages responding "
                                 "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                                 + ", ".join(awaiting), "messages", "invalid_value")
        if role == "assistant":
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise _wrong_type(f"{p}.tool_calls", "an array", calls)
            awaiting = [c.get("id") for c in calls if isinstance(c, dict)]
            if content is None and not calls:
                raise missing(f"{p}.content")
        elif content is None:
            raise missing(f"{p}.content")
    if awaiting:
        raise InvalidRequest("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                             "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                             + ", ".join(awaiting), "messages", "invalid_value")


Check = Callable[[dict[str, Any], str], None]


def _num(lo: float, hi: float) -> Check:
    return lambda body, key: _number(body, key, lo, hi)


def _int(lo: int, hi: int | None = None) -> Check:
    return lambda body, key: _integer(body, key, lo, hi)


def _of(kind: type | tuple[type, ...], expected: str) -> Check:
    return lambda body, key: _typed(body, key, kind, expected)


def _whole(check: Callable[[dict[str, Any]], None]) -> Check:
    return lambda body, _key: check(body)


# Per endpoint, the optional fields checked when present (a request pays only for what it sends).
_COMMON: dict[str, Check] = {
    "temperature": _num(0, 2), "top_p": _num(0, 1), "stream": _of(bool, "a boolean"), "user": _of(str, "a string"),
    "parallel_tool_calls": _of(bool, "a boolean"), "store": _of(bool, "a boolean"), "metadata": _metadata,
}
_CHAT: dict[str, Check] = {
    **_COMMON, "n": _int(1, 128), "max_tokens": _int(1), "max_completion_tokens": _int(1),
    "presence_penalty": _num(-2, 2), "frequency_penalty": _num(-2, 2), "logprobs": _of(bool, "a boolean"),
    "top_logprobs": _int(0, 20), "seed": _int(-(2**63), 2**63 - 1), "stream_options": _whole(_stream_options),
    "response_format": _whole(_chat_format),
}
_COMPLETIONS: dict[str, Check] = {**_COMMON, "n": _int(1, 128), "max_tokens": _int(0),
                                  "stream_options": _whole(_stream_options)}


def _fields(body: dict[str, Any], table: dict[str, Check]) -> None:
    for key in body:
        check = table.get(key)
        if check is not None:
            check(body, key)


def chat(body: dict[str, Any]) -> None:
    """POST /v1/chat/completions."""
    _model(body)
    _chat_messages(body)
    _fields(body, _CHAT)
    if "tools" in body or "tool_choice" in body:
        _tool_choice(body, chat_tool_names(body), chat=True)


def completions(body: dict[str, Any]) -> None:
    """POST /v1/completions."""
    _model(body)
    _required(body, "prompt", (str, list), "one of a string or array")
    _fields(body, _COMPLETIONS)


def _input_items(items: list[Any]) -> None:
    for i, item in enumerate(items):
        p = f"input[{i}]"
        item = _object(p, item)
        if item.get("type", "message") == "message":
            role = item.get("role")
            if role is None:
                raise missing(f"{p}.role")
            _one_of(f"{p}.role", role, _RESPONSES_ROLES)
            if item.get("content") is None:
                raise missing(f"{p}.content")


def _truncation(body: dict[str, Any], key: str) -> None:
    if body[key] is not None:
        _one_of(key, body[key], ("auto", "disabled"))


_RESPONSES: dict[str, Check] = {
    **_COMMON, "instructions": _of((str, list), "a string"), "previous_response_id": _of(str, "a string"),
    "background": _of(bool, "a boolean"), "max_output_tokens": _int(1), "top_logprobs": _int(0, 20),
    "truncation": _truncation, "text": _whole(_responses_format),
}


def responses(body: dict[str, Any]) -> None:
    """POST /v1/responses (and a WebSocket ``response.create``)."""
    _model(body)
    value = body.get("input")
    if value is None:
        if body.get("previous_response_id") is None and body.get("prompt") is None and body.get("generate") is not False:
            raise missing("input")
    elif isinstance(value, list):
        _input_items(value)
    elif not isinstance(value, str):
        raise _wrong_type("input", "one of a string or array of input items", value)
    _fields(body, _RESPONSES)
    if "tools" in body or "tool_choice" in body:
        _tool_choice(body, responses_tool_names(body), chat=False)


def embeddings(body: dict[str, Any]) -> None:
    """POST /v1/embeddings."""
    _model(body)
    if _required(body, "input", (str, list), "one of a string or array") == []:
        raise InvalidRequest("'$.input' is invalid. Please check the API reference: "
                             "https://platform.openai.com/docs/api-reference.", "input")
    fmt = body.get("encoding_format")
    if fmt is not None:
        _one_of("encoding_format", fmt, ("float", "base64"))
    _integer(body, "dimensions", 1)


def messages(body: dict[str, Any]) -> None:
    """POST /v1/messages (Anthropic: ``field: message`` wording, no param/code)."""
    for key in ("model", "max_tokens", "messages"):
        if body.get(key) is None:
            raise InvalidRequest(f"{key}: Field required")
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be a valid integer greater than or equal to 1")
    if not isinstance(body["messages"], list):
        raise InvalidRequest("messages: Input should be a valid list")
    for i, message in enumerate(body["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
