"""The Responses API served by a chat-only provider: the request down to chat, the answer back up.

Anthropic-dialect deployments are reached through litellm's chat call, but Codex speaks only
Responses. ``chat_params`` turns a Responses create body into chat parameters; ``response_from_chat``
turns a chat completion into a Response object, and ``ResponsesStream`` turns chat chunks into the
Responses event sequence OpenAI streams (created, in_progress, output_item.added,
content_part.added, output_text.delta..., done events, completed), every event numbered.
Both sides work on plain dicts (a litellm result dumped), so nothing here imports litellm.
"""
from __future__ import annotations

import os
import time
from typing import Any

import orjson

from proxy.errors import InvalidRequest

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = ("input_text", "output_text", "text", "refusal")
# Items that carry nothing a chat provider can read back (this provider never produced them).
_SKIPPED_ITEMS = ("reasoning",)
_FINISH_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(16).hex()


# --- request: Responses -> chat ----------------------------------------------------------------

def chat_params(body: dict[str, Any]) -> dict[str, Any]:
    """litellm ``acompletion`` parameters for a Responses create ``body`` (validated by the API layer).

    Only function tools reach the provider; hosted tools (web search, ...) are left out, as a
    chat provider cannot run them. Raises InvalidRequest for what a chat call cannot express.
    """
    if body.get("previous_response_id") is not None:
        raise InvalidRequest(
            "This deployment keeps no stored responses: send the whole conversation as input, without "
            "previous_response_id.", code="previous_response_not_found", param="previous_response_id")
    if body.get("background") is True:
        raise InvalidRequest("This deployment cannot run responses in the background.", param="background")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        _add_items(messages, instructions, "instructions")
    value = body.get("input")
    items = [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value or []
    _add_items(messages, items, "input")
    params: dict[str, Any] = {"messages": messages}
    tools = [_tool(t) for t in body.get("tools") or () if t.get("type") == "function"]
    if tools:
        params["tools"] = tools
        if body.get("tool_choice") is not None:
            params["tool_choice"] = _tool_choice(body["tool_choice"])
        if body.get("parallel_tool_calls") is not None:
            params["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("max_output_tokens") is not None:
        params["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "user"):
        if body.get(name) is not None:
            params[name] = body[name]
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_object":
        params["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        params["response_format"] = {"type": "json_schema", "json_schema": spec}
    return params


def _add_items(messages: list[dict[str, Any]], items: list[Any], where: str) -> None:
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = _ROLES[item["role"]]
            messages.append({"role": role, "content": _content(item["content"], role, f"{where}[{i}].content")})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text(output or [], f"{where}[{i}].output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind not in _SKIPPED_ITEMS:
            raise InvalidRequest(f"Input items of type '{kind}' cannot be sent to this deployment (a chat "
                                 "provider): use messages, function_call and function_call_output items.",
                                 param=f"{where}[{i}]")


def _content(content: Any, role: str, param: str) -> Any:
    """Message content for chat: a string for system and assistant turns, parts (text, images) for users."""
    if isinstance(content, str):
        return content
    if role != "user" or all(part.get("type") in _TEXT_PARTS for part in content):
        return _text(content, param)
    parts = []
    for part in content:
        if part.get("type") == "input_image" and part.get("image_url"):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        elif part.get("type") in _TEXT_PARTS:
            parts.append({"type": "text", "text": part.get("text") or part.get("refusal") or ""})
        else:
            raise InvalidRequest(f"Content parts of type '{part.get('type')}' cannot be sent to this deployment.",
                                 param=param)
    return parts


def _text(parts: list[Any], param: str) -> str:
    if any(part.get("type") not in _TEXT_PARTS for part in parts):
        raise InvalidRequest("Only text content can be sent to this deployment here.", param=param)
    return "".join(part.get("text") or part.get("refusal") or "" for part in parts)


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    if choice.get("type") == "allowed_tools":
        return choice.get("mode", "auto")
    return "auto"


# --- answer: chat -> Responses -----------------------------------------------------------------

def response_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Responses usage from a chat usage object; cache reads and writes from litellm's Anthropic fields."""
    usage = usage or {}
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    inp, out = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = prompt_details.get("cached_tokens") or usage.get("cache_read_input_tokens") or 0
    written = prompt_details.get("cache_write_tokens") or usage.get("cache_creation_input_tokens") or 0
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": int(written)},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)},
        "total_tokens": inp + out,
    }


def response_object(body: dict[str, Any], response_id: str, model: str, status: str) -> dict[str, Any]:
    """A Response as OpenAI builds it from the create request ``body``, with no output (nor usage) yet."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    response = {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
        "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {}, "model": model, "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": False,  # the provider keeps nothing: continuations must resend the conversation
        "temperature": body.get("temperature", 1.0), "text": {"format": {"type": "text"}, **text},
        "tool_choice": body.get("tool_choice", "auto"), "tools": [_tool_echo(t) for t in body.get("tools") or ()],
        "top_p": body.get("top_p", 1.0), "truncation": "disabled",
    }
    if body.get("user") is not None:
        response["user"] = body["user"]
    return response


def _tool_echo(tool: dict[str, Any]) -> dict[str, Any]:
    """A function tool as OpenAI echoes it: ``description``, ``parameters`` and ``strict`` filled in."""
    if tool.get("type") != "function":
        return tool
    return {"description": None, "parameters": None, "strict": True, **tool}


def _finished(response: dict[str, Any], finish_reason: str | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    reason = _FINISH_INCOMPLETE.get(finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["usage"] = response_usage(usage)
    return response


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def response_from_chat(body: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    """A whole Response from a non-streamed chat completion (dumped to a dict)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    response = response_object(body, _new_id("resp_"), completion.get("model") or body.get("model"), "completed")
    status = "incomplete" if choice.get("finish_reason") in _FINISH_INCOMPLETE else "completed"
    if message.get("content"):
        response["output"].append(_message_item(_new_id("msg_"), status, [_text_part(message["content"])]))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        response["output"].append(_call_item(_new_id("fc_"), call.get("id") or _new_id("call_"),
                                             function.get("name") or "", function.get("arguments") or "", status))
    return _finished(response, choice.get("finish_reason"), completion.get("usage"))


class ResponsesStream:
    """Chat chunks in, Responses streaming events out (dicts, numbered from 0).

    Output items open as their first delta arrives and close when another kind of output
    starts or the stream ends; a tool call is one ``function_call`` item per chat tool index.
    """

    def __init__(self, body: dict[str, Any], model: str) -> None:
        self.response = response_object(body, _new_id("resp_"), model, "in_progress")
        self._seq = 0
        self._open: dict[str, Any] | None = None    # the output item being streamed
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its item
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        snapshot = {**self.response, "output": []}
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                events += self._call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def finish(self) -> list[dict[str, Any]]:
        events = self._close()
        response = _finished(self.response, self._finish, self._usage)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return events + [self._event(kind, response=response)]

    def _text(self, piece: str) -> list[dict[str, Any]]:
        events = []
        if self._open is None or self._open["type"] != "message":
            events = self._close()
            item = _message_item(_new_id("msg_"), "in_progress", [])
            events += self._add(item)
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=self._index,
                                      content_index=0, part=_text_part("")))
            item["text"] = ""
        item = self._open
        item["text"] += piece
        events.append(self._event("response.output_text.delta", item_id=item["id"], output_index=self._index,
                                  content_index=0, delta=piece, logprobs=[]))
        return events

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            events = self._close()
            item = _call_item(_new_id("fc_"), call.get("id") or _new_id("call_"), function.get("name") or "", "",
                              "in_progress")
            self._calls[index] = item
            events += self._add(item)
        piece = function.get("arguments") or ""
        if piece and item is self._open:
            item["arguments"] += piece
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=self._index, delta=piece))
        return events

    @property
    def _index(self) -> int:
        return len(self.response["output"]) - 1

    def _add(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self._open = item
        self.response["output"].append(item)
        return [self._event("response.output_item.added", output_index=self._index, item=dict(item))]

    def _close(self) -> list[dict[str, Any]]:
        """Done events for the item being streamed, which then takes its final form in the output."""
        item, self._open = self._open, None
        if item is None:
            return []
        status = "incomplete" if self._finish in _FINISH_INCOMPLETE else "completed"
        loc = {"item_id": item["id"], "output_index": self._index}
        if item["type"] == "message":
            part = _text_part(item.pop("text"))
            events = [self._event("response.output_text.done", **loc, content_index=0, text=part["text"], logprobs=[]),
                      self._event("response.content_part.done", **loc, content_index=0, part=part)]
            item["content"] = [part]
        else:
            events = [self._event("response.function_call_arguments.done", **loc, name=item["name"],
                                  arguments=item["arguments"])]
        item["status"] = status
        return events + [self._event("response.output_item.done", output_index=self._index, item=item)]


def sse(event: dict[str, Any]) -> bytes:
    """One Responses event as OpenAI frames it on an HTTP stream."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
