"""Scan, don't parse: find usage and the first token in bytes we relay untouched.

Parsing every SSE chunk as JSON would cost more than the rest of the proxy together;
the facts accounting needs sit at known places (the first content delta, the final usage
object), so a few byte searches per chunk are enough.
"""
from __future__ import annotations

import re
import time

import orjson

from proxy.call import Usage

# First real output: non-empty text, reasoning, or a tool call (chat / completions / responses).
_FIRST_TOKEN = re.compile(
    rb'"(?:content|text|reasoning_content|reasoning)":"[^"]|"tool_calls":\[\{|\.delta"'
)
# One output event; counted only to estimate what a stream produced when no usage arrives.
_DELTA_EVENT = re.compile(rb'"(?:content|text|delta)":"[^"]')
_USAGE_KEY = b'"usage":'
_USAGE_ONLY = re.compile(rb'"choices":\s*\[\]')
_TAIL_BYTES = 32768


def event_type(data: bytes) -> bytes:
    """The ``type`` of a JSON event; OpenAI-style events put it first, so a find is enough."""
    i = data.find(b'"type":"')
    return data[i + 8 : data.find(b'"', i + 8)] if i >= 0 else b""


def response_id(data: bytes) -> str | None:
    """The id of the response a Responses body or a stream's first event (``response.created``)
    carries: its first ``"id"``, found without parsing."""
    i = data.find(b'"id":"')
    return data[i + 6 : data.find(b'"', i + 6)].decode() if i >= 0 else None


def extract_usage(buf: bytes) -> Usage | None:
    """The last non-null ``"usage": {...}`` object in ``buf``, or None."""
    pos = len(buf)
    while True:
        pos = buf.rfind(_USAGE_KEY, 0, pos)
        if pos < 0:
            return None
        start = pos + len(_USAGE_KEY)
        while start < len(buf) and buf[start] in b" \t\r\n":
            start += 1
        if start < len(buf) and buf[start] == 0x7B:  # "{"
            end = _matching_brace(buf, start)
            if end > 0:
                try:
                    return Usage.from_openai(orjson.loads(buf[start:end]))
                except (orjson.JSONDecodeError, TypeError, ValueError):
                    return None


def _matching_brace(buf: bytes, start: int) -> int:
    """Index just past the brace closing the object at ``start``; usage objects hold no strings with braces.

    Jumps brace to brace with ``find`` (a byte loop in Python was a tenth of a request's CPU)."""
    depth, i = 1, start + 1
    while True:
        close = buf.find(b"}", i)
        if close < 0:
            return -1
        opened = buf.find(b"{", i, close)
        if opened >= 0:  # a nested object opens before the next close
            depth += 1
            i = opened + 1
            continue
        depth -= 1
        if depth == 0:
            return close + 1
        i = close + 1


class StreamScanner:
    """Watches relayed stream chunks: time of the first token, a tail for the usage, a delta count."""

    __slots__ = ("started", "first_token_at", "deltas", "_tail", "_tail_len")

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_token_at: float | None = None
        self.deltas = 0
        self._tail: list[bytes] = []
        self._tail_len = 0

    def feed(self, chunk: bytes) -> None:
        if self.first_token_at is None and _FIRST_TOKEN.search(chunk):
            self.first_token_at = time.perf_counter()
        self.deltas += len(_DELTA_EVENT.findall(chunk))
        self._tail.append(chunk)
        self._tail_len += len(chunk)
        while self._tail_len - len(self._tail[0]) >= _TAIL_BYTES:
            self._tail_len -= len(self._tail.pop(0))

    def usage(self) -> Usage | None:
        return extract_usage(b"".join(self._tail))

    def usage_or_estimate(self, input_estimate: int) -> Usage:
        """Reported usage, else the input estimate and one token per delta event seen."""
        usage = self.usage()
        if usage is not None:
            return usage
        return Usage(input_tokens=input_estimate, output_tokens=self.deltas, reported=False)


class UsageChunkFilter:
    """Drops the usage-only chat chunk that the proxy asked for but the client did not.

    The proxy always asks the upstream for ``stream_options.include_usage`` so accounting
    is exact; a client that did not ask must not receive the extra ``choices: []`` chunk
    (naive clients index ``choices[0]``). Works on whole SSE events, holding back at
    most one partial event between chunks.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._pending = data
            return b""
        cut += 2
        complete, self._pending = data[:cut], data[cut:]
        if not _USAGE_ONLY.search(complete):
            return complete
        events = complete.split(b"\n\n")[:-1]
        return b"".join(event + b"\n\n" for event in events if not _USAGE_ONLY.search(event))

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest
