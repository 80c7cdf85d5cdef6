"""Byte renderers for each endpoint's non-streamed body and SSE stream.

Per request the JSON envelope is serialised once; per token only a prefix, the
token word and a suffix are concatenated (token words never need JSON escaping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .text import output_text, token_bytes


@dataclass(slots=True)
class Turn:
    """Everything a renderer needs to know about one generation."""

    rid: str
    model: str
    created: int
    n: int  # output tokens
    input_tokens: int
    capped: bool  # True when the request set the output length (finish = length/max_tokens)
    include_usage: bool = False
    continuous_usage: bool = False  # vLLM's stream_options.continuous_usage_stats: usage so far in every chunk


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


def _openai_usage(t: Turn) -> dict[str, int]:
    return {"prompt_tokens": t.input_tokens, "completion_tokens": t.n, "total_tokens": t.input_tokens + t.n}


class ChatRenderer:
    """POST /v1/chat/completions."""

    def __init__(self, t: Turn) -> None:
        self.t = t
        self._head = {"id": t.rid, "object": "chat.completion.chunk", "created": t.created, "model": t.model}
        self._usage_null = b',"usage":null' if t.include_usage else b""
        self._tok_prefix = b"data: " + _open(self._head) + b',"choices":[{"index":0,"delta":{"content":"'
        self._tok_suffix = b'"},"logprobs":null,"finish_reason":null}]' + self._usage_null + b"}\n\n"
        self._tok_usage = b'"},"logprobs":null,"finish_reason":null}],"usage":'

    def complete(self) -> bytes:
        t = self.t
        return orjson.dumps(
            {
                "id": t.rid,
                "object": "chat.completion",
                "created": t.created,
                "model": t.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": output_text(t.n), "refusal": None},
                        "logprobs": None,
                        "finish_reason": "length" if t.capped else "stop",
                    }
                ],
                "usage": _openai_usage(t),
            }
        )

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + _open({**self._head, "choices": [choice]}) + self._usage_null + b"}\n\n"

    def prelude(self) -> bytes:
        if self.t.continuous_usage:
            choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            return _data({**self._head, "choices": [choice], "usage": {**_openai_usage(self.t), "completion_tokens": 0,
                                                                       "total_tokens": self.t.input_tokens}})
        return self._chunk({"role": "assistant", "content": ""}, None)

    def token(self, i: int) -> bytes:
        if self.t.continuous_usage:
            p = self.t.input_tokens
            usage = b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (p, i + 1, p + i + 1)
            return self._tok_prefix + token_bytes(i) + self._tok_usage + usage
        return self._tok_prefix + token_bytes(i) + self._tok_suffix

    def epilogue(self) -> bytes:
        out = self._chunk({}, "length" if self.t.capped else "stop")
        if self.t.include_usage:
            out += _data({**self._head, "choices": [], "usage": _openai_usage(self.t)})
        return out + DONE


class CompletionRenderer:
    """POST /v1/completions (legacy text completions)."""

    def __init__(self, t: Turn) -> None:
        self.t = t
        self._head = {"id": t.rid, "object": "text_completion", "created": t.created, "model": t.model}
        self._usage_null = b',"usage":null' if t.include_usage else b""
        self._tok_prefix = b"data: " + _open(self._head) + b',"choices":[{"text":"'
        self._tok_suffix = b'","index":0,"logprobs":null,"finish_reason":null}]' + self._usage_null + b"}\n\n"

    def _finish(self) -> str:
        return "length" if self.t.capped else "stop"

    def complete(self) -> bytes:
        choice = {"text": output_text(self.t.n), "index": 0, "logprobs": None, "finish_reason": self._finish()}
        return orjson.dumps({**self._head, "choices": [choice], "usage": _openai_usage(self.t)})

    def prelude(self) -> bytes:
        return b""

    def token(self, i: int) -> bytes:
        return self._tok_prefix + token_bytes(i) + self._tok_suffix

    def epilogue(self) -> bytes:
        choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": self._finish()}
        out = b"data: " + _open({**self._head, "choices": [choice]}) + self._usage_null + b"}\n\n"
        if self.t.include_usage:
            out += _data({**self._head, "choices": [], "usage": _openai_usage(self.t)})
        return out + DONE


class ResponsesRenderer:
    """POST /v1/responses (Responses API; stream = typed events with sequence numbers, no [DONE])."""

    _FIRST_DELTA_SEQ = 4  # created, in_progress, output_item.added, content_part.added

    def __init__(self, t: Turn, max_output_tokens: int | None) -> None:
        self.t = t
        self.max_output_tokens = max_output_tokens
        self.item_id = "msg_" + t.rid[5:]
        self._tok_prefix = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":"'
            + self.item_id.encode()
            + b'","output_index":0,"content_index":0,"logprobs":[],"delta":"'
        )

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": []}

    def _item(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self._part(text)]
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant", "content": content}

    def _response(self, done: bool) -> dict[str, Any]:
        t = self.t
        usage = {
            "input_tokens": t.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": t.n,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": t.input_tokens + t.n,
        }
        return {
            "id": t.rid,
            "object": "response",
            "created_at": t.created,
            "status": "completed" if done else "in_progress",
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": self.max_output_tokens,
            "model": t.model,
            "output": [self._item("completed", output_text(t.n))] if done else [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage if done else None,
            "user": None,
            "metadata": {},
        }

    def complete(self) -> bytes:
        return orjson.dumps(self._response(True))

    def prelude(self) -> bytes:
        loc = {"output_index": 0}
        part = {**loc, "item_id": self.item_id, "content_index": 0}
        events = [
            {"type": "response.created", "response": self._response(False)},
            {"type": "response.in_progress", "response": self._response(False)},
            {"type": "response.output_item.added", **loc, "item": self._item("in_progress", None)},
            {"type": "response.content_part.added", **part, "part": self._part("")},
        ]
        return b"".join(_event({**e, "sequence_number": seq}) for seq, e in enumerate(events))

    def token(self, i: int) -> bytes:
        seq = self._FIRST_DELTA_SEQ + i
        return self._tok_prefix + token_bytes(i) + b'","sequence_number":%d}\n\n' % seq

    def epilogue(self) -> bytes:
        text = output_text(self.t.n)
        part = {"output_index": 0, "item_id": self.item_id, "content_index": 0}
        events = [
            {"type": "response.output_text.done", **part, "text": text, "logprobs": []},
            {"type": "response.content_part.done", **part, "part": self._part(text)},
            {"type": "response.output_item.done", "output_index": 0, "item": self._item("completed", text)},
            {"type": "response.completed", "response": self._response(True)},
        ]
        first = self._FIRST_DELTA_SEQ + self.t.n
        return b"".join(_event({**e, "sequence_number": first + k}) for k, e in enumerate(events))


class AnthropicRenderer:
    """POST /v1/messages (Anthropic Messages API)."""

    def __init__(self, t: Turn) -> None:
        self.t = t
        self.stop_reason = "max_tokens" if t.capped else "end_turn"

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

    def complete(self) -> bytes:
        content = [{"type": "text", "text": output_text(self.t.n)}]
        return orjson.dumps(self._message(content, self.stop_reason, self.t.n))

    def prelude(self) -> bytes:
        return (
            _event({"type": "message_start", "message": self._message([], None, 1)})
            + _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            + _event({"type": "ping"})
        )

    _TOK_PREFIX = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"'
    )

    def token(self, i: int) -> bytes:
        return self._TOK_PREFIX + token_bytes(i) + b'"}}\n\n'

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
