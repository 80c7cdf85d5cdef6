"""The ASGI vocabulary the simulator's HTTP and WebSocket sides share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
HeaderSeq = Sequence[tuple[bytes, bytes]]


class SimulatedDrop(Exception):
    """Raised mid-response so uvicorn closes the connection abruptly (drop_mid_stream fault)."""


def norm_path(path: str) -> str:
    """'/v1/chat/completions', '/chat/completions' and '/v1/v1/...' all map to 'chat/completions'."""
    path = path.strip("/")
    while path.startswith("v1/") or path == "v1":
        path = path[3:]
    return path


def bearer_key(headers: HeaderSeq) -> bytes | None:
    """The API key a request carries (``Authorization: Bearer`` or Anthropic's ``x-api-key``)."""
    key = None
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            key = value[7:].strip()
        elif name == b"x-api-key":
            key = value
    return key
