"""litellm's chat results on OpenAI's chat wire.

litellm's ``ModelResponse`` objects carry its own fields (``provider_specific_fields``,
``citations``, ``cache_creation_input_tokens``...), put the final usage on a chunk whose
choice is empty and drop the nulls OpenAI always sends. These functions rebuild, from a
litellm result dumped to a dict, exactly the members OpenAI's chat completion and chunk
objects have, so a client's strict parser sees what OpenAI would send.
"""
from __future__ import annotations

from typing import Any


def chat_completion(result: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object."""
    choices = [
        {"index": c.get("index", i), "message": _message(c.get("message") or {}), "logprobs": None,
         "finish_reason": c.get("finish_reason") or "stop"}
        for i, c in enumerate(result.get("choices") or ())
    ]
    out = {**_head(result, "chat.completion"), "choices": choices}
    if result.get("usage"):
        out["usage"] = chat_usage(result["usage"])
    return out


def chat_chunks(chunk: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The OpenAI chunks one litellm chunk stands for: its choice deltas (empty ones dropped), then,
    when it carries usage, a separate usage chunk with ``choices: []``. ``include_usage``: the
    client asked for usage, so every chunk says ``"usage": null`` until that last one."""
    head = _head(chunk, "chat.completion.chunk")
    choices = [choice for choice in map(_chunk_choice, chunk.get("choices") or ()) if choice is not None]
    out = []
    if choices:
        out.append({**head, "choices": choices, **({"usage": None} if include_usage else {})})
    if chunk.get("usage"):
        out.append({**head, "choices": [], "usage": chat_usage(chunk["usage"])})
    return out


def chat_usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(prompt_details.get("cached_tokens") or 0)},
        "completion_tokens_details": {"reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)},
    }


def _head(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    head = {"id": obj.get("id"), "object": kind, "created": obj.get("created"), "model": obj.get("model")}
    if obj.get("system_fingerprint"):
        head["system_fingerprint"] = obj["system_fingerprint"]
    return head


def _message(message: dict[str, Any]) -> dict[str, Any]:
    out = {"role": "assistant", "content": message.get("content"), "refusal": None, "annotations": []}
    calls = [_tool_call(call) for call in message.get("tool_calls") or ()]
    if calls:
        out["tool_calls"] = calls
    return out


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"id": call.get("id"), "type": "function",
            "function": {"name": function.get("name"), "arguments": function.get("arguments") or ""}}


def _chunk_choice(choice: dict[str, Any]) -> dict[str, Any] | None:
    """A chunk's choice with OpenAI's members, or None when it says nothing (no delta, no finish)."""
    delta = choice.get("delta") or {}
    out: dict[str, Any] = {}
    if delta.get("role"):
        out["role"] = delta["role"]
    calls = [_delta_call(call) for call in delta.get("tool_calls") or ()]
    if delta.get("content") or (delta.get("content") is not None and "role" in out and not calls):
        out["content"] = delta["content"]
    if calls:
        out["tool_calls"] = calls
    if "role" in out:
        out["refusal"] = None
    finish = choice.get("finish_reason")
    if not out and finish is None:
        return None
    return {"index": choice.get("index", 0), "delta": out, "logprobs": None, "finish_reason": finish}


def _delta_call(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call delta: id, type and name on its first chunk only, as OpenAI streams them."""
    function = call.get("function") or {}
    out: dict[str, Any] = {"index": call.get("index", 0)}
    if call.get("id"):
        out["id"], out["type"] = call["id"], "function"
    piece = {"arguments": function.get("arguments") or ""}
    if function.get("name"):
        piece = {"name": function["name"], **piece}
    out["function"] = piece
    return out
