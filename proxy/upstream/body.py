"""Rewrite the few bytes of a request body that must change on the way upstream.

The body is forwarded as the client sent it; only the top-level ``model`` member is
replaced (and, for chat/completions streams, usage reporting is switched on so the
ledger is exact; providers that can report usage in every chunk — vLLM's
``continuous_usage_stats`` — are asked to, so even a stream cancelled midway is billed
from the provider's own count). Re-serialising would cost CPU and could alter what the client meant.

The member is found by walking the top-level object with the byte length of each value, which
msgspec reports without building the values: on bench/overhead.py's 300 KiB history under half
the instructions of the regex scans for ``"model"`` it replaced, which could not tell a nested
or escaped key from the real one either. The walk is exact or refuses: when it does not
account for every byte (a duplicate top-level key, say), the body is re-encoded from the parsed
one, which names the model once.
"""
from __future__ import annotations

import re

import msgspec
import orjson

from proxy.errors import InvalidRequest

# Every top-level member as the raw bytes of its value: no value is built (nor UTF-8 checked: the
# API layer's orjson parse, which every body passed, is the validation).
_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_WS = rb"[ \t\n\r]*"
_KEY = rb'"([^"\\]*(?:\\.[^"\\]*)*)"'  # a key's text between its quotes, escapes and all
# What comes before a member's value: "{" (the first) or "," (the others), its key, ":".
_FIRST, _NEXT = (re.compile(_WS + opening + _WS + _KEY + _WS + b":" + _WS) for opening in (rb"\{", b","))
_CLOSE = re.compile(_WS + rb"\}" + _WS + rb"\Z")
_MAX_DEPTH = 255  # orjson.dumps's limit
_USAGE_STREAMS = frozenset({"chat", "completions"})


def needs_usage_injection(endpoint: str, stream: bool, client_wants_usage: bool) -> bool:
    return stream and endpoint in _USAGE_STREAMS and not client_wants_usage


def wants_continuous_usage(endpoint: str, stream: bool) -> bool:
    return stream and endpoint in _USAGE_STREAMS


def rewrite_body(raw: bytes | None, body: dict, model: str, inject_usage: bool, continuous_usage: bool = False) -> bytes:
    """``raw`` with the top-level model set to ``model`` and, if asked, usage in the stream;
    ``body`` (``raw`` parsed) encoded that way when there are no client bytes to keep (``raw`` None)
    or they cannot be spliced exactly."""
    if raw is None:
        return _reencode(body, model, inject_usage, continuous_usage)
    usage = inject_usage or continuous_usage
    if usage and "stream_options" in body:
        return _reencode(body, model, inject_usage, continuous_usage)
    view = memoryview(raw)  # slices of a view are not copies: the body is copied once, by the join
    parts: list[bytes | memoryview] = [view]
    if body["model"] != model:
        span = model_member(raw)
        if span is None:
            return _reencode(body, model, inject_usage, continuous_usage)
        parts = [view[: span[0]], b'"model":' + orjson.dumps(model), view[span[1] :]]
    if usage:
        brace = raw.index(b"{") + 1
        options = b'{"include_usage":true,"continuous_usage_stats":true}' if continuous_usage else b'{"include_usage":true}'
        parts = [view[:brace], b'"stream_options":' + options + b",", parts[0][brace:], *parts[1:]]
    return raw if len(parts) == 1 else b"".join(parts)


def model_member(raw: bytes) -> tuple[int, int] | None:
    """The span of the top-level ``"model": value`` member of the JSON object ``raw``, however its
    key is spelled; None if ``raw`` has no such member or its top level has a key twice.

    Each step matches "{" or ",", a key whose decoded text is the next key msgspec found and a
    value equal to the bytes msgspec gave for it; reaching the closing brace and the end of ``raw``
    after the last key means the walk is the document's one parse, so the span found is the member
    a provider reads. A duplicate key (msgspec keeps its last value) breaks the walk. A key with no
    quote or backslash in it, written without spaces, is compared as bytes: such a token can only
    be that key in valid JSON."""
    try:
        members = _MEMBERS.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # msgspec nests less deep than orjson: re-encode
        return None
    pos, span, before = 0, None, _FIRST
    for name, value in members.items():
        spelled = (b',"' if pos else b'{"') + name.encode() + b'":'  # as compact encoders write it
        key, start = pos + 1, pos + len(spelled)
        if not (raw.startswith(spelled, pos) and raw.startswith(value, start) and '"' not in name and "\\" not in name):
            match = before.match(raw, pos)  # spaces, escapes: the general pattern
            if match is None or _key_text(match.group(1)) != name:
                return None  # not the parse msgspec made: a key seen twice
            key, start = match.start(1) - 1, match.end()
            if not raw.startswith(value, start):
                return None
        pos, before = start + len(value), _NEXT
        if name == "model":
            span = (key, pos)  # from the key's opening quote to the end of the value
    return span if _CLOSE.match(raw, pos) else None


def _key_text(text: bytes) -> str | None:
    """A key's text (escapes such as ``mod\\u0065l`` decoded); None if it is not valid JSON text."""
    try:
        return text.decode() if b"\\" not in text else orjson.loads(b'"' + text + b'"')
    except ValueError:  # not UTF-8: the API layer refuses such bodies before they get here
        return None


def _reencode(body: dict, model: str, inject_usage: bool, continuous_usage: bool = False) -> bytes:
    new = dict(body, model=model)
    if inject_usage or continuous_usage:
        options = new.get("stream_options")
        new["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        if continuous_usage:
            new["stream_options"]["continuous_usage_stats"] = True
    try:
        return orjson.dumps(new)
    except TypeError:  # deeper than orjson writes, and the walk could not splice it: no exact way left
        raise InvalidRequest(f"The request body nests JSON too deeply to be forwarded with its model replaced; "
                             f"keep it within {_MAX_DEPTH} levels.", code="nested_too_deeply") from None
