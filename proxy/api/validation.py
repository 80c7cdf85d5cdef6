"""Refuse what OpenAI itself refuses cheaply, before any quota is spent.

Admission reserves ``max_tokens`` (or its aliases) against rate limits and budgets, so a
negative or boolean value there would be a negative reservation: credit, not a charge. The
other checks answer a malformed body with the 400 the provider would give, instead of
admitting, counting and forwarding it. Messages and codes follow OpenAI's wording, so SDKs
and clients that branch on ``error.code`` / ``error.param`` see what they expect.

One function per endpoint body; each raises ProxyError(400, param=...) naming a faulty field.
Absent and ``null`` optional fields are left alone (OpenAI treats ``null`` as unset).
"""
from __future__ import annotations

from collections.abc import Callable

from proxy.api.errors import ProxyError

TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
MAX_TOKENS = 2**31 - 1  # OpenAI's integer fields are 32-bit; far above any context window
MAX_N = 128
_Check = Callable[[str, object], None]  # (field, its non-null value) -> None, or raises


def chat(body: dict) -> None:
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if type(messages) is not list:
        raise _invalid_type("messages", "an array of objects", messages)
    if not messages:
        raise ProxyError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                         "but got an empty array instead.", code="empty_array", param="messages")
    if set(map(type, messages)) != _DICT_ONLY:  # one pass in C; the index is looked for only on a fault
        i = next(i for i, message in enumerate(messages) if type(message) is not dict)
        raise _invalid_type(f"messages[{i}]", "an object", messages[i])
    _optional(body, _WITH_N)


def completions(body: dict) -> None:
    _text_input(body, "prompt")
    _optional(body, _WITH_N)


def responses(body: dict) -> None:
    _text_input(body, "input")
    _optional(body, _SAMPLING)


def embeddings(body: dict) -> None:
    _text_input(body, "input")


BY_ENDPOINT: dict[str, Callable[[dict], None]] = {
    "chat": chat,
    "completions": completions,
    "responses": responses,
    "embeddings": embeddings,
}


def validate(endpoint: str, body: dict) -> None:
    """Check ``body`` (a JSON object with a model) for ``endpoint``, a key of ENDPOINT_PATHS."""
    BY_ENDPOINT[endpoint](body)


def _optional(body: dict, checks: dict[str, _Check]) -> None:
    """Run the checks of the fields ``body`` has (a set intersection in C: absent fields cost nothing)."""
    for name in checks.keys() & body.keys():
        value = body[name]
        if value is not None:
            checks[name](name, value)


def _ranged(kinds: tuple[type, ...], expected: str, noun: str, low: float, high: float) -> _Check:
    def check(name: str, value: object) -> None:
        if type(value) not in kinds:  # bool is an int subclass, yet `true` is not a token count
            raise _invalid_type(name, expected, value)
        if value < low:
            raise _out_of_range(name, f"{noun} below minimum value", ">=", low, value, f"{noun}_below_min_value")
        if value > high:
            raise _out_of_range(name, f"{noun} above maximum value", "<=", high, value, f"{noun}_above_max_value")
    return check


def _integer(low: int, high: int) -> _Check:
    return _ranged((int,), "an integer", "integer", low, high)


def _number(low: float, high: float) -> _Check:
    return _ranged((int, float), "a number", "decimal", low, high)


def _of_type(kind: type, expected: str) -> _Check:
    def check(name: str, value: object) -> None:
        if type(value) is not kind:
            raise _invalid_type(name, expected, value)
    return check


_DICT_ONLY = {dict}
# What admission reads (output-token caps, stream) and the cheap numeric ranges.
_SAMPLING: dict[str, _Check] = {
    **{name: _integer(1, MAX_TOKENS) for name in TOKEN_FIELDS},
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "stream": _of_type(bool, "a boolean"),
    "stream_options": _of_type(dict, "an object"),
}
_WITH_N = {**_SAMPLING, "n": _integer(1, MAX_N)}


def _text_input(body: dict, name: str) -> None:
    value = body.get(name)
    if value is None:
        raise _missing(name)
    if type(value) is not str and type(value) is not list:
        raise _invalid_type(name, "a string or an array", value)


def _missing(name: str) -> ProxyError:
    return ProxyError(400, f"Missing required parameter: '{name}'.", code="missing_required_parameter", param=name)


def _invalid_type(name: str, expected: str, value: object) -> ProxyError:
    return ProxyError(400, f"Invalid type for '{name}': expected {expected}, but got {_json_type(value)} instead.",
                      code="invalid_type", param=name)


def _out_of_range(name: str, what: str, op: str, bound: float, value: float, code: str) -> ProxyError:
    return ProxyError(400, f"Invalid '{name}': {what}. Expected a value {op} {bound}, but got {value} instead.",
                      code=code, param=name)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    if type(value) is int:
        return "an integer"
    if type(value) is float:
        return "a decimal"
    if type(value) is str:
        return "a string"
    if type(value) is list:
        return "an array"
    return "an object"
