"""uvicorn's sans-I/O WebSocket protocol, made cheap for many small frames.

A Responses turn is ~30 small events, one text frame each. uvicorn writes every frame with
its own ``transport.write`` — one ``send()`` system call per frame, which measured as the
largest single cost of a WebSocket turn (more than a third of the proxy's CPU). HTTP
streaming does not pay it: one upstream chunk is relayed as one write. Here every write a
connection makes while the loop runs one callback (the frames of one upstream chunk) is
joined and handed to the transport once, just before the loop polls for I/O again: the same
bytes in the same order, no timer, no added wait.

The app may also hand over several text frames in one ASGI message (the extension
``laneway.websocket.send_texts``, advertised in the scope): ``{"type": SEND_TEXTS, "texts":
[utf-8 bytes, ...]}``. Without permessage-deflate each frame is a 2-10 byte header and the
payload as is; no str round trip, no per-frame ASGI message.
"""
from __future__ import annotations

import asyncio
import struct
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

SEND_TEXTS = "laneway.websocket.send_texts"


class CoalescedWrites:
    """A transport whose ``write`` calls made in one loop iteration reach the socket as one."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()  # a close frame queued just before must still go out
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # pause_reading, is_closing, get_extra_info, ...
        return getattr(self._transport, name)


def text_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed, final text frame (RFC 6455 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """Pass as uvicorn's ``ws`` protocol class; behaves as ``ws="websockets-sansio"`` otherwise."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][SEND_TEXTS] = {}

    async def send(self, message: Any) -> None:
        if message["type"] != SEND_TEXTS:
            return await super().send(message)
        await self.writable.wait()
        if not self.handshake_complete or self.initial_response is not None:
            raise RuntimeError(f"'{SEND_TEXTS}' needs an accepted WebSocket.")
        if self.disconnected or self.close_sent or self.conn.state is not State.OPEN:
            raise ClientDisconnected()
        if self.conn.extensions:  # permessage-deflate: websockets compresses frame by frame
            for payload in message["texts"]:
                self.conn.send_text(payload)
            self.transport.write(b"".join(self.conn.data_to_send()))
        else:
            self.transport.write(b"".join([text_frame(payload) for payload in message["texts"]]))


UVICORN_WS = f"{__name__}:{CoalescingWebSocketProtocol.__name__}"  # uvicorn's ``ws=`` (importable by workers)
