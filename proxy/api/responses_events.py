"""Responses API objects and events that Laneway writes itself (not relayed from an upstream).

A warm-up turn (``generate: false``) and a stream that broke off mid-way must still look to
the SDKs exactly like what OpenAI sends: every field the spec marks required, echoed from the
request as the provider would, and events numbered in the stream's ``sequence_number`` order.
"""
from __future__ import annotations

import time

import orjson

_SEQUENCE = b'"sequence_number":'


def response_object(body: dict, response_id: str, status: str, *, usage: dict | None = None,
                    error: dict | None = None) -> dict:
    """A Response as the provider would build it from the create request ``body``."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
        "model": body.get("model"), "output": [], "error": error, "incomplete_details": None,
        "instructions": body.get("instructions"), "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
        "max_output_tokens": body.get("max_output_tokens"), "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning"), "store": body.get("store", True), "text": text, "truncation": "disabled",
        "user": body.get("user"), "usage": usage,
    }


def zero_usage() -> dict:
    return {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}


def next_sequence_number(*chunks: bytes) -> int:
    """One past the last ``sequence_number`` in the relayed bytes (searched newest chunk first)."""
    for chunk in reversed(chunks):
        at = chunk.rfind(_SEQUENCE)
        if at >= 0:
            start = at + len(_SEQUENCE)
            end = start
            while end < len(chunk) and chunk[end:end + 1].isdigit():
                end += 1
            if end > start:
                return int(chunk[start:end]) + 1
    return 0


def failure_events(body: dict, response_id: str | None, sequence: int, code: str, message: str) -> list[dict]:
    """What ends a stream that broke off: a well-formed ``error`` event, then ``response.failed``
    whose ``response.error.message`` clients such as Codex display."""
    failed = response_object(body, response_id or "resp_unknown", "failed",
                             error={"code": "server_error", "message": message})
    return [
        {"type": "error", "code": code, "message": message, "param": None, "sequence_number": sequence},
        {"type": "response.failed", "response": failed, "sequence_number": sequence + 1},
    ]


def sse(events: list[dict]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
