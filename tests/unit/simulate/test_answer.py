"""What the simulated model decides to say: which function it calls, and schema-valid values."""

from __future__ import annotations

import json

import jsonschema
import pytest

from proxy.simulate.answer import MARKER, Function, Plan, arguments, choose_call, json_text, pieces_of, value_for

F = [Function("get_weather", {"type": "object"}), Function("shell", None)]


@pytest.mark.parametrize(("choice", "last_user", "after_tool", "expected"), [
    ("auto", "hello", False, None),
    ("auto", f"do {MARKER}", False, "get_weather"),
    ("auto", f"do {MARKER}=shell", False, "shell"),
    ("auto", f"do {MARKER}", True, None),  # the tool answered: now the model talks
    ("required", "hello", True, "get_weather"),  # required forces a call every turn, as OpenAI does
    ("none", f"{MARKER}", False, None),
    ({"type": "function", "function": {"name": "shell"}}, "x", False, "shell"),
    ({"type": "function", "name": "shell"}, "x", False, "shell"),
    ({"type": "allowed_tools", "mode": "required", "tools": []}, "x", False, "get_weather"),
])
def test_choose_call(choice: object, last_user: str, after_tool: bool, expected: str | None) -> None:
    call = choose_call(F, choice, last_user, after_tool)
    assert (call.name if call else None) == expected


SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "string", "minLength": 10}, "b": {"type": ["null", "number"]},
                                      "c": {"const": 3}, "d": {"type": "boolean"}}, "required": ["a", "b", "c", "d"]},
    {"type": "array", "items": {"type": "integer", "minimum": 5}, "minItems": 3},
    {"type": "object", "properties": {"x": {"$ref": "#/$defs/e"}}, "required": ["x"], "$defs": {
        "e": {"type": "object", "properties": {"y": {"enum": ["p", "q"]}}, "required": ["y"]}}},
    {"anyOf": [{"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]}, {"type": "null"}]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_values_follow_the_schema(schema: dict) -> None:
    jsonschema.validate(value_for(schema), schema)
    jsonschema.validate(json.loads(json_text({"type": "json_schema", "schema": schema}, 4)), schema)


def test_arguments_fill_required_and_make_shell_commands_runnable() -> None:
    exec_command = Function("exec_command", {"type": "object", "properties": {
        "cmd": {"type": "string"}, "login": {"type": "boolean"}}, "required": ["cmd"], "additionalProperties": False})
    assert json.loads(arguments(exec_command)) == {"cmd": "echo hi"}
    shell = Function("shell", {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                               "required": ["command"]})
    assert json.loads(arguments(shell)) == {"command": ["echo", "hi"]}
    assert json.loads(arguments(Function("ping", None))) == {}


def test_structured_output_is_cut_at_the_cap() -> None:
    plan = Plan(pieces_of('{"answer":"tok1 tok2 "}'))
    assert "".join(plan.pieces) == '{"answer":"tok1 tok2 "}' and len(plan.pieces) == 6
    assert plan.size(100, True) == (6, False) and plan.size(4, True) == (4, True) and plan.size(16, False) == (6, False)
    assert Plan(None).size(7, True) == (7, True) and Plan(None).size(16, False) == (16, False)
