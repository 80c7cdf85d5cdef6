"""Tiny raw-ASGI helpers for the hot path (no Request/Response objects per call)."""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable

import orjson

from proxy.api.errors import ProxyError

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def request_id(scope: Scope) -> str:
    """The client's x-request-id when it is a sane token, else a fresh one."""
    given = header(scope, b"x-request-id")
    if given and len(given) <= 128 and given.isascii() and given.replace(b"-", b"").replace(b"_", b"").isalnum():
        return given.decode()
    return "req_" + os.urandom(12).hex()


async def read_body(receive: Receive, scope: Scope, limit: int) -> bytes:
    """The whole request body, refusing (413) as soon as it exceeds ``limit`` bytes."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    message = await receive()
    if message["type"] == "http.disconnect":  # gone, or cut off by server.body_timeout_s
        raise _disconnected()
    body = message.get("body", b"")
    if len(body) > limit:  # a chunked body (no content-length) can arrive in one message
        raise too_large(limit)
    if not message.get("more_body"):
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def _disconnected() -> ProxyError:
    return ProxyError(400, "The client closed the connection before sending the whole body.", code="client_disconnected")


def too_large(limit: int) -> ProxyError:
    """413 for a body (or a WebSocket message) over ``server.max_body_bytes``."""
    return ProxyError(
        413,
        f"Request body is larger than this proxy accepts ({limit} bytes; server.max_body_bytes in the policy).",
        code="request_too_large",
    )


async def send_bytes(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]], content_type: bytes = JSON) -> None:
    all_headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *headers]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: object, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send_bytes(send, status, orjson.dumps(payload), headers)


async def send_error(send: Send, error: ProxyError, rid: str | None = None) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    if rid:
        headers.append((b"x-request-id", rid.encode()))
    await send_bytes(send, error.status, error.body(), headers)
