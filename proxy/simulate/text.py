"""Deterministic token model shared by every simulated endpoint.

* Output: the request's ``max_completion_tokens`` / ``max_tokens`` /
  ``max_output_tokens`` (first one present and not null) else the profile's
  ``default_output_tokens``. Token *i* (1-based) is the word ``"tok<i> "``, so the
  full text of *n* tokens is ``"tok1 tok2 … tok<n> "`` (trailing space included:
  the non-streamed text is exactly the concatenation of the streamed deltas).
* Input: ``max(1, ceil(len(prompt_text) / 4))`` where prompt_text is the
  concatenated text of ``system``, ``instructions``, ``messages``, ``prompt`` and
  ``input`` (strings, lists of strings, or lists of items/parts whose text lives
  in ``text`` or, recursively, ``content``; a function call's ``arguments`` and a
  tool's ``output`` count too).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from functools import lru_cache
from typing import Any

_OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_PROMPT_KEYS = ("system", "instructions", "messages", "prompt", "input")
_CACHED = 8192
TOKENS: tuple[str, ...] = tuple(f"tok{i} " for i in range(1, _CACHED + 1))
TOKEN_BYTES: tuple[bytes, ...] = tuple(t.encode() for t in TOKENS)


def token(i: int) -> str:
    """Text of the 0-based output token `i`."""
    return TOKENS[i] if i < _CACHED else f"tok{i + 1} "


def token_bytes(i: int) -> bytes:
    return TOKEN_BYTES[i] if i < _CACHED else f"tok{i + 1} ".encode()


@lru_cache(maxsize=512)
def output_text(n: int) -> str:
    """Full completion text of `n` tokens."""
    return "".join(token(i) for i in range(n))


def requested_output(body: dict[str, Any], default: int) -> tuple[int, bool]:
    """(output token count, whether the request set it explicitly); ValueError if invalid."""
    for key in _OUTPUT_KEYS:
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"'{key}' must be a non-negative integer")
            return value, True
    return default, False


def _collect(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect(item, out)
    elif isinstance(value, dict):
        text = value.get("text")
        if isinstance(text, str):
            out.append(text)
        else:
            _collect(value.get("content"), out)
        for key in ("arguments", "output"):  # a function call and its output are conversation too
            if isinstance(value.get(key), str):
                out.append(value[key])


def prompt_text(body: dict[str, Any]) -> str:
    out: list[str] = []
    for key in _PROMPT_KEYS:
        value = body.get(key)
        if value is not None:
            _collect(value, out)
    return "".join(out)


def count_text_tokens(text: str) -> int:
    return max(1, -(-len(text) // 4))


def count_input_tokens(body: dict[str, Any]) -> int:
    """Input tokens the simulator charges and reports for request `body`."""
    return count_text_tokens(prompt_text(body))


def embedding(text: str) -> list[float]:
    """8 floats in [-1, 1) derived from a hash of `text`: same input, same vector."""
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    return [int.from_bytes(digest[i : i + 2], "little") / 32768.0 - 1.0 for i in range(0, 16, 2)]


def embedding_base64(text: str) -> str:
    """`embedding(text)` as OpenAI's ``encoding_format: base64`` sends it: little-endian float32s."""
    vector = embedding(text)
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
