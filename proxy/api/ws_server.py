"""uvicorn's sans-I/O WebSocket protocol with writes coalesced per event-loop iteration.

A Responses turn is ~30 small events, one text frame each. uvicorn writes every frame with
its own ``transport.write`` — one ``send()`` system call per frame, which measured as the
largest single cost of a WebSocket turn (more than a third of the proxy's CPU). HTTP
streaming does not pay it: one upstream chunk is relayed as one write. Here every write a
connection makes while the loop runs one callback (the frames of one upstream chunk) is
joined and handed to the transport once, just before the loop polls for I/O again: the same
bytes in the same order, no timer, no added wait.
"""
from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


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


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """Pass as uvicorn's ``ws`` protocol class; behaves as ``ws="websockets-sansio"`` otherwise."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]
