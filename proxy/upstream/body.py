"""Rewrite the few bytes of a request body that must change on the way upstream.

The body is forwarded as the client sent it; only the top-level ``model`` value is
replaced (and, for chat/completions streams, usage reporting is switched on so the
ledger is exact; providers that can report usage in every chunk — vLLM's
``continuous_usage_stats`` — are asked to, so even a stream cancelled midway is billed
from the provider's own count). Re-serialising would cost CPU and could alter what the client meant.
"""
from __future__ import annotations

import re

import orjson

_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
# The key "model" however spelled: JSON lets a client write any of its letters as \u00XX.
_MODEL_KEY_ESCAPED = re.compile(rb'"(?:m|\\u006[dD])(?:o|\\u006[fF])(?:d|\\u0064)(?:e|\\u0065)(?:l|\\u006[cC])"\s*:')
_USAGE_STREAMS = frozenset({"chat", "completions"})


def needs_usage_injection(endpoint: str, stream: bool, client_wants_usage: bool) -> bool:
    return stream and endpoint in _USAGE_STREAMS and not client_wants_usage


def wants_continuous_usage(endpoint: str, stream: bool) -> bool:
    return stream and endpoint in _USAGE_STREAMS


def rewrite_body(raw: bytes | None, body: dict, model: str, inject_usage: bool, continuous_usage: bool = False) -> bytes:
    """``raw`` with the top-level model set to ``model`` and, if asked, usage in the stream;
    ``body`` encoded that way when there are no client bytes to keep (``raw`` None)."""
    if raw is None:
        return _reencode(body, model, inject_usage, continuous_usage)
    out = raw
    if body["model"] != model:
        matches = _MODEL_FIELD.findall(raw)
        # "model" also nested, or a key spelled with escapes ("mod\u0065l") that the one match
        # may not be: fall back to a faithful re-encode (the escape check runs only on bodies with \u)
        if len(matches) != 1 or (b"\\u" in raw and len(_MODEL_KEY_ESCAPED.findall(raw)) != 1):
            return _reencode(body, model, inject_usage, continuous_usage)
        out = _MODEL_FIELD.sub(lambda _: b'"model":' + orjson.dumps(model), raw, count=1)
    if inject_usage or continuous_usage:
        if "stream_options" in body:
            return _reencode(body, model, inject_usage, continuous_usage)
        options = b'{"include_usage":true,"continuous_usage_stats":true}' if continuous_usage else b'{"include_usage":true}'
        brace = out.index(b"{")
        out = out[: brace + 1] + b'"stream_options":' + options + b"," + out[brace + 1 :]
    return out


def _reencode(body: dict, model: str, inject_usage: bool, continuous_usage: bool = False) -> bytes:
    new = dict(body, model=model)
    if inject_usage or continuous_usage:
        options = new.get("stream_options")
        new["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        if continuous_usage:
            new["stream_options"]["continuous_usage_stats"] = True
    return orjson.dumps(new)
