"""What the simulated model answers: the token model's words, JSON for the JSON modes, or a call.

Deterministic, so tests can assert exact bytes:

* A function tool is called when ``tool_choice`` forces it (``"required"``, a named function, or
  ``allowed_tools`` in required mode), or, with ``"auto"``, when the latest user message contains
  ``sim:tool`` (first function tool) or ``sim:tool=<name>`` and the conversation does not already
  end with a tool's output — so a client's tool loop runs one call, then gets a text answer.
* Arguments and json_schema output are built from the schema (object/properties/required/type/
  enum/const/array/items/anyOf/$ref); a string named ``cmd``/``command`` is ``"echo hi"`` and an
  array of strings so named is ``["echo", "hi"]``, so shell tools (Codex's ``exec_command``,
  ``shell``) run something real.
* Structured text is cut into 4-character tokens; a cap below its length truncates it
  (finish ``length``), as a real model would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .text import output_text, prompt_text

MARKER = "sim:tool"
CHARS_PER_TOKEN = 4
_COMMAND_KEYS = ("cmd", "command")


@dataclass(frozen=True, slots=True)
class Function:
    """A function tool the model may call (``namespace`` set for tools inside a namespace)."""

    name: str
    parameters: dict[str, Any] | None
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The answer before pacing: ``pieces`` None means the token model's words."""

    pieces: tuple[str, ...] | None
    call: Function | None = None

    def size(self, cap: int, capped: bool) -> tuple[int, bool]:
        """(tokens to emit, cut at the cap) given the request's output cap (``capped``: it set one).
        The token model writes exactly the cap; structured output its own length, cut if longer."""
        if self.pieces is None:
            return cap, capped
        whole = len(self.pieces)
        return (min(whole, cap), cap < whole) if capped else (whole, False)


def pieces_of(text: str) -> tuple[str, ...]:
    return tuple(text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN))


def chat_functions(body: dict[str, Any]) -> list[Function]:
    out = []
    for tool in body.get("tools") or ():
        if tool.get("type") == "function":
            spec = tool["function"]
            out.append(Function(spec["name"], spec.get("parameters")))
    return out


def responses_functions(body: dict[str, Any]) -> list[Function]:
    out = []
    for tool in body.get("tools") or ():
        if tool.get("type") == "function":
            out.append(Function(tool["name"], tool.get("parameters")))
        elif tool.get("type") == "namespace":
            out += [Function(t["name"], t.get("parameters"), tool.get("name"))
                    for t in tool.get("tools") or () if t.get("type", "function") == "function"]
    return out


def messages_functions(body: dict[str, Any]) -> list[Function]:
    """Anthropic tools: client tools carry ``input_schema``; server tools (``type`` set) are not called."""
    return [Function(t["name"], t.get("input_schema")) for t in body.get("tools") or ()
            if t.get("type", "custom") == "custom" and "name" in t]


def messages_choice(choice: Any) -> Any:
    """Anthropic's ``tool_choice`` (auto / any / tool / none) in the OpenAI shape ``plan`` reads."""
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "name": choice.get("name")}
    return {"any": "required", "none": "none"}.get(kind, "auto")


def _forced(choice: Any) -> tuple[str, str | None]:
    """(mode, function name) from any tool_choice shape: mode is none / auto / required."""
    if choice is None or isinstance(choice, str):
        return choice or "auto", None
    kind = choice.get("type")
    if kind == "function":
        spec = choice.get("function", choice)
        return "required", spec.get("name")
    if kind == "allowed_tools":
        spec = choice.get("allowed_tools", choice)
        return spec.get("mode", "auto"), None
    return "auto", None


def _marked(text: str) -> tuple[bool, str | None]:
    at = text.find(MARKER)
    if at < 0:
        return False, None
    rest = text[at + len(MARKER):]
    if rest.startswith("="):
        return True, rest[1:].split()[0] if rest[1:].split() else None
    return True, None


def choose_call(functions: list[Function], choice: Any, last_user: str, after_tool: bool) -> Function | None:
    """The function this turn calls, or None for a text answer."""
    if not functions:
        return None
    mode, name = _forced(choice)
    if mode == "none":
        return None
    if mode == "auto":
        marked, name = _marked(last_user)
        if not marked or after_tool:
            return None
    if name is not None:
        return next((f for f in functions if f.name == name), functions[0])
    return functions[0]


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    while isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        schema = node if isinstance(node, dict) else {}
        ref = schema.get("$ref")
    return schema


def value_for(schema: Any, name: str = "", root: dict[str, Any] | None = None, everything: bool = True) -> Any:
    """A value valid for ``schema``; ``everything`` False fills only required properties."""
    if not isinstance(schema, dict):
        return "tok1"
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return value_for(schema[key][0], name, root, everything)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        keys = list(props) if everything else [k for k in props if k in required]
        return {k: value_for(props[k], k, root, everything) for k in keys}
    if kind == "array":
        if name in _COMMAND_KEYS:
            return ["echo", "hi"]
        count = max(1, int(schema.get("minItems") or 0))
        return [value_for(schema.get("items"), "", root, everything) for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if name in _COMMAND_KEYS:
        return "echo hi"
    text = "tok1"
    return text * max(1, -(-int(schema.get("minLength") or 0) // len(text)))


def arguments(function: Function) -> str:
    return orjson.dumps(value_for(function.parameters or {"type": "object"}, everything=False)).decode()


def json_text(fmt: dict[str, Any] | None, words: int) -> str | None:
    """The JSON a json_object / json_schema format asks for, or None for plain text."""
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt["type"] == "json_object":
        return orjson.dumps({"answer": output_text(words)}).decode()
    return orjson.dumps(value_for(fmt.get("schema") or {})).decode()


def plan(functions: list[Function], choice: Any, fmt: dict[str, Any] | None, last_user: str, after_tool: bool,
         words: int) -> Plan:
    call = choose_call(functions, choice, last_user, after_tool)
    if call is not None:
        return Plan(pieces_of(arguments(call)), call)
    text = json_text(fmt, words)
    return Plan(None if text is None else pieces_of(text))


def as_items(value: Any) -> list[Any]:
    """Responses ``input`` as a list of items (a bare string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value) if isinstance(value, list) else [value]


def cues_from_messages(messages: list[dict[str, Any]]) -> tuple[str, bool]:
    """(text of the latest user message, whether the chat ends with a tool's output)."""
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    text = prompt_text({"messages": [last_user]}) if last_user else ""
    return text, bool(messages) and messages[-1].get("role") == "tool"


def cues_from_anthropic(messages: list[dict[str, Any]]) -> tuple[str, bool]:
    """(text of the latest user message, whether it carries a ``tool_result``) for the Messages API,
    where a tool's output comes back as a block of a user message."""
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if last_user is None:
        return "", False
    content = last_user.get("content")
    blocks = content if isinstance(content, list) else []
    after_tool = any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)
    return prompt_text({"messages": [last_user]}), after_tool


def cues_from_items(items: list[Any]) -> tuple[str, bool]:
    """(text of the latest user message, whether the input ends with a tool call's output)."""
    last_user = next((i for i in reversed(items) if i.get("role") == "user"), None)
    text = prompt_text({"input": [last_user]}) if last_user is not None else ""
    last = items[-1] if items else None
    return text, isinstance(last, dict) and str(last.get("type", "")).endswith("_output")
