"""Byte renderers for each endpoint's non-streamed body and SSE stream.

Per request the JSON envelope is serialised once; per token only a prefix, the
token and a suffix are concatenated (the token model's words never need JSON
escaping; structured pieces are escaped once each).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .answer import Function
from .text import output_text, token, token_bytes


@dataclass(slots=True)
class Turn:
    """Everything a renderer needs to know about one generation."""

    rid: str
    model: str
    created: int
    n: int  # output tokens (per choice)
    input_tokens: int
    capped: bool  # True when the output was cut at the request's cap (finish = length/max_tokens)
    include_usage: bool = False
    continuous_usage: bool = False  # vLLM's stream_options.continuous_usage_stats: usage so far in every chunk
    choices: int = 1  # chat/completions `n`
    pieces: tuple[str, ...] | None = None  # structured output (JSON, call arguments); None = the token model
    call: Function | None = None  # the answer is a call of this function, its arguments the pieces
    top_logprobs: int | None = None  # chat `logprobs: true` (with this many alternatives); None: not asked

    @property
    def text(self) -> str:
        return output_text(self.n) if self.pieces is None else "".join(self.pieces[: self.n])

    def piece(self, i: int) -> bytes:
        """Token ``i`` escaped for inside a JSON string."""
        return token_bytes(i) if self.pieces is None else orjson.dumps(self.pieces[i])[1:-1]

    def logprob(self, i: int) -> dict[str, Any]:
        """Token ``i``'s logprobs entry: the model is certain, its alternatives far behind."""
        tok = token(i) if self.pieces is None else self.pieces[i]
        alternatives = [(tok, 0.0)] + [(f"alt{j}", -4.0 * j) for j in range(1, self.top_logprobs or 0)]
        return {"token": tok, "logprob": 0.0, "bytes": list(tok.encode()),
                "top_logprobs": [{"token": a, "logprob": lp, "bytes": list(a.encode())}
                                 for a, lp in alternatives[: self.top_logprobs or 0]]}

    @property
    def output_tokens(self) -> int:
        return self.n * self.choices

    @property
    def suffix(self) -> str:
        return self.rid.split("_", 1)[-1].split("-", 1)[-1]


class Renderer(Protocol):
    def complete(self) -> bytes: ...
    def prelude(self) -> bytes: ...
    def token(self, i: int) -> bytes: ...
    def epilogue(self) -> bytes: ...


def _open(obj: dict[str, Any]) -> bytes:
    """JSON of `obj` without its closing brace, to append more members."""
    return orjson.dumps(obj)[:-1]


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _openai_usage(t: Turn, completion: int | None = None) -> dict[str, Any]:
    out = t.output_tokens if completion is None else completion
    return {
        "prompt_tokens": t.input_tokens, "completion_tokens": out, "total_tokens": t.input_tokens + out,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def _call_id(t: Turn, choice: int = 0) -> str:
    return f"call_{t.suffix}{choice:02x}" if t.choices > 1 else f"call_{t.suffix}"


class ChatRenderer:
    """POST /v1/chat/completions: ``n`` choices, text / JSON content or one tool call each."""

    def __init__(self, t: Turn) -> None:
        self.t = t
        self._head = {"id": t.rid, "object": "chat.completion.chunk", "created": t.created, "model": t.model,
                      "service_tier": "default", "system_fingerprint": "fp_sim"}
        self._usage_null = b',"usage":null' if t.include_usage else b""
        head = b"data: " + _open(self._head) + b',"choices":[{"index":'
        opening = b'{"tool_calls":[{"index":0,"function":{"arguments":"' if t.call else b'{"content":"'
        closing = b'"}}]}' if t.call else b'"}'
        self._prefixes = [head + b"%d" % c + b',"delta":' + opening for c in range(t.choices)]
        self._closing = closing
        self._suffix = closing + b',"logprobs":null,"finish_reason":null}]' + self._usage_null + b"}\n\n"
        self._plain = not t.continuous_usage and t.top_logprobs is None  # every token chunk alike
        if t.choices == 1 and t.pieces is None and self._plain:
            self.token = self._word  # type: ignore[method-assign]  # the hot path: one choice of words

    def _finish(self) -> str:
        return "length" if self.t.capped else "tool_calls" if self.t.call else "stop"

    def _message(self, c: int) -> dict[str, Any]:
        t = self.t
        if t.call is None:
            return {"role": "assistant", "content": t.text, "refusal": None, "annotations": []}
        call = {"id": _call_id(t, c), "type": "function", "function": {"name": t.call.name, "arguments": t.text}}
        return {"role": "assistant", "content": None, "refusal": None, "annotations": [], "tool_calls": [call]}

    def complete(self) -> bytes:
        t = self.t
        logprobs = None if t.top_logprobs is None else {
            "content": [t.logprob(i) for i in range(t.n)], "refusal": None}
        choices = [{"index": c, "message": self._message(c), "logprobs": logprobs, "finish_reason": self._finish()}
                   for c in range(t.choices)]
        body = {"id": t.rid, "object": "chat.completion", "created": t.created, "model": t.model,
                "choices": choices, "usage": _openai_usage(t), "service_tier": "default",
                "system_fingerprint": "fp_sim"}
        return orjson.dumps(body)

    def _chunk(self, c: int, delta: dict[str, Any], finish: str | None, usage: dict[str, Any] | None = None) -> bytes:
        choice = {"index": c, "delta": delta, "logprobs": None, "finish_reason": finish}
        if usage is not None:
            return _data({**self._head, "choices": [choice], "usage": usage})
        return b"data: " + _open({**self._head, "choices": [choice]}) + self._usage_null + b"}\n\n"

    def _first_delta(self, c: int) -> dict[str, Any]:
        t = self.t
        if t.call is None:
            return {"role": "assistant", "content": "", "refusal": None}
        call = {"index": 0, "id": _call_id(t, c), "type": "function", "function": {"name": t.call.name, "arguments": ""}}
        return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}

    def prelude(self) -> bytes:
        t = self.t
        usage = _openai_usage(t, 0) if t.continuous_usage else None
        return b"".join([self._chunk(c, self._first_delta(c), None, usage) for c in range(t.choices)])

    def _word(self, i: int) -> bytes:
        return self._prefixes[0] + token_bytes(i) + self._suffix

    def token(self, i: int) -> bytes:
        t = self.t
        piece = t.piece(i)
        if self._plain:
            return b"".join([prefix + piece + self._suffix for prefix in self._prefixes])
        logprobs = b"null" if t.top_logprobs is None else orjson.dumps({"content": [t.logprob(i)], "refusal": None})
        out = []
        for c, prefix in enumerate(self._prefixes):
            usage = (b',"usage":' + orjson.dumps(_openai_usage(t, i * t.choices + c + 1)) if t.continuous_usage
                     else self._usage_null)
            out.append(prefix + piece + self._closing + b',"logprobs":' + logprobs + b',"finish_reason":null}]'
                       + usage + b"}\n\n")
        return b"".join(out)

    def epilogue(self) -> bytes:
        out = b"".join([self._chunk(c, {}, self._finish()) for c in range(self.t.choices)])
        if self.t.include_usage:
            out += _data({**self._head, "choices": [], "usage": _openai_usage(self.t)})
        return out + DONE


class CompletionRenderer:
    """POST /v1/completions (legacy text completions), ``n`` choices."""

    def __init__(self, t: Turn) -> None:
        self.t = t
        self._head = {"id": t.rid, "object": "text_completion", "created": t.created, "model": t.model}
        self._usage_null = b',"usage":null' if t.include_usage else b""
        self._tok_prefix = b"data: " + _open(self._head) + b',"choices":[{"text":"'
        self._tok_suffixes = [b'","index":%d,"logprobs":null,"finish_reason":null}]' % c + self._usage_null + b"}\n\n"
                              for c in range(t.choices)]

    def _finish(self) -> str:
        return "length" if self.t.capped else "stop"

    def complete(self) -> bytes:
        choices = [{"text": self.t.text, "index": c, "logprobs": None, "finish_reason": self._finish()}
                   for c in range(self.t.choices)]
        usage = {k: v for k, v in _openai_usage(self.t).items() if k.endswith("tokens")}
        return orjson.dumps({**self._head, "choices": choices, "usage": usage})

    def prelude(self) -> bytes:
        return b""

    def token(self, i: int) -> bytes:
        if len(self._tok_suffixes) == 1:
            return self._tok_prefix + self.t.piece(i) + self._tok_suffixes[0]
        piece = self.t.piece(i)
        return b"".join([self._tok_prefix + piece + suffix for suffix in self._tok_suffixes])

    def epilogue(self) -> bytes:
        out = b""
        for c in range(self.t.choices):
            choice = {"text": "", "index": c, "logprobs": None, "finish_reason": self._finish()}
            out += b"data: " + _open({**self._head, "choices": [choice]}) + self._usage_null + b"}\n\n"
        if self.t.include_usage:
            usage = {k: v for k, v in _openai_usage(self.t).items() if k.endswith("tokens")}
            out += _data({**self._head, "choices": [], "usage": usage})
        return out + DONE


def _tool_echo(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return tool
    return {"type": "function", "name": tool["name"], "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": tool.get("strict", True), **tool}


def response_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The request fields a Response object repeats, with the provider's defaults filled in."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    tier = body.get("service_tier")
    return {
        "background": body.get("background") is True,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default" if tier in (None, "auto") else tier,
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity", "medium")},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_tool_echo(tool) for tool in body.get("tools") or ()],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        **({"user": body["user"]} if isinstance(body.get("user"), str) else {}),
        "metadata": body.get("metadata") or {},
    }


def _responses_usage(t: Turn) -> dict[str, Any]:
    return {
        "input_tokens": t.input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": t.n,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": t.input_tokens + t.n,
    }


class ResponsesRenderer:
    """POST /v1/responses (typed events with sequence numbers, no [DONE]): one message or one function call."""

    _TAIL = ("user", "metadata")  # after usage, where OpenAI puts them

    def __init__(self, t: Turn, fields: dict[str, Any]) -> None:
        self.t = t
        self.fields = {k: v for k, v in fields.items() if k not in self._TAIL}
        self.tail = {k: fields[k] for k in self._TAIL if k in fields}
        call = t.call
        self.item_id = ("fc_" if call else "msg_") + t.suffix
        # a plain answer ends at the cap and completes; structured output cut short is incomplete
        self.incomplete = t.capped and t.pieces is not None
        self._first_delta_seq = 3 if call else 4  # created, in_progress, output_item.added (, content_part.added)
        kind = b"response.function_call_arguments.delta" if call else b"response.output_text.delta"
        extra = b"" if call else b'"content_index":0,"logprobs":[],'
        self._tok_prefix = (b"event: " + kind + b'\ndata: {"type":"' + kind + b'","item_id":"' + self.item_id.encode()
                            + b'","output_index":0,' + extra + b'"delta":"')
        self.completed_at: int | None = None

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def item(self, status: str, done: bool) -> dict[str, Any]:
        t = self.t
        if t.call is not None:
            item: dict[str, Any] = {"type": "function_call", "id": self.item_id, "call_id": _call_id(t),
                                    "name": t.call.name, "arguments": t.text if done else "", "status": status}
            if t.call.namespace is not None:
                item["namespace"] = t.call.namespace
            return item
        content = [self._part(t.text)] if done else []
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant", "content": content}

    def output_items(self) -> list[dict[str, Any]]:
        return [self.item("incomplete" if self.incomplete else "completed", True)]

    def response(self, status: str) -> dict[str, Any]:
        """The Response object in ``status`` (queued / in_progress / completed / incomplete / cancelled)."""
        t = self.t
        done = status in ("completed", "incomplete")
        if done and self.completed_at is None:
            self.completed_at = int(time.time())
        return {
            "id": t.rid,
            "object": "response",
            "created_at": t.created,
            "status": status,
            "completed_at": self.completed_at if done else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "model": t.model,
            "output": self.output_items() if done else [],
            **self.fields,
            **({"usage": _responses_usage(t)} if done else {}),  # the spec's usage is never null
            **self.tail,
        }

    @property
    def final_status(self) -> str:
        return "incomplete" if self.incomplete else "completed"

    def complete(self) -> bytes:
        return orjson.dumps(self.response(self.final_status))

    def prelude(self) -> bytes:
        loc = {"output_index": 0}
        events = [
            {"type": "response.created", "response": self.response("in_progress")},
            {"type": "response.in_progress", "response": self.response("in_progress")},
            {"type": "response.output_item.added", **loc, "item": self.item("in_progress", False)},
        ]
        if self.t.call is None:
            events.append({"type": "response.content_part.added", **loc, "item_id": self.item_id, "content_index": 0,
                           "part": self._part("")})
        return b"".join(_event({**e, "sequence_number": seq}) for seq, e in enumerate(events))

    def token(self, i: int) -> bytes:
        seq = self._first_delta_seq + i
        return self._tok_prefix + self.t.piece(i) + b'","sequence_number":%d}\n\n' % seq

    def epilogue(self) -> bytes:
        t = self.t
        status = self.final_status
        loc = {"output_index": 0, "item_id": self.item_id}
        if t.call is not None:
            events = [{"type": "response.function_call_arguments.done", **loc, "name": t.call.name, "arguments": t.text}]
        else:
            part = {**loc, "content_index": 0}
            events = [
                {"type": "response.output_text.done", **part, "text": t.text, "logprobs": []},
                {"type": "response.content_part.done", **part, "part": self._part(t.text)},
            ]
        events += [
            {"type": "response.output_item.done", "output_index": 0, "item": self.item(status, True)},
            {"type": f"response.{status}", "response": self.response(status)},
        ]
        first = self._first_delta_seq + t.n
        return b"".join(_event({**e, "sequence_number": first + k}) for k, e in enumerate(events))


class AnthropicRenderer:
    """POST /v1/messages (Anthropic Messages API): a text block, or one ``tool_use`` block."""

    _TEXT_PREFIX = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"'
    )
    _JSON_PREFIX = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"input_json_delta","partial_json":"'
    )

    def __init__(self, t: Turn) -> None:
        self.t = t
        self.stop_reason = "max_tokens" if t.capped else "tool_use" if t.call else "end_turn"
        self._prefix = self._JSON_PREFIX if t.call else self._TEXT_PREFIX

    def _message(self, content: list[dict[str, Any]], stop: str | None, output_tokens: int) -> dict[str, Any]:
        t = self.t
        return {
            "id": t.rid,
            "type": "message",
            "role": "assistant",
            "model": t.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": t.input_tokens, "output_tokens": output_tokens},
        }

    def _block(self, whole: bool) -> dict[str, Any]:
        """The content block; streamed, a tool_use block starts with empty input and gets it as JSON deltas."""
        t = self.t
        if t.call is None:
            return {"type": "text", "text": t.text if whole else ""}
        arguments = orjson.loads(t.text) if whole and not t.capped else {}
        return {"type": "tool_use", "id": f"toolu_{t.suffix}", "name": t.call.name, "input": arguments}

    def complete(self) -> bytes:
        return orjson.dumps(self._message([self._block(True)], self.stop_reason, self.t.n))

    def prelude(self) -> bytes:
        return (
            _event({"type": "message_start", "message": self._message([], None, 1)})
            + _event({"type": "content_block_start", "index": 0, "content_block": self._block(False)})
            + _event({"type": "ping"})
        )

    def token(self, i: int) -> bytes:
        return self._prefix + self.t.piece(i) + b'"}}\n\n'

    def epilogue(self) -> bytes:
        return (
            _event({"type": "content_block_stop", "index": 0})
            + _event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": self.t.n},
                }
            )
            + _event({"type": "message_stop"})
        )
