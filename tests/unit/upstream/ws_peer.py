"""A scripted WebSocket server for upstream-socket tests: it writes exactly the bytes a test
asks for (frames split, batched, fragmented, cut off), which a real server library would not."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Self

from websockets.speedups import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True, rsv: int = 0, mask: bytes | None = None,
          length: int | None = None) -> bytes:
    """A server frame (unmasked unless ``mask``); ``length`` overrides the declared payload length."""
    n = len(payload) if length is None else length
    b1 = 0x80 if mask else 0
    head = bytes(((0x80 if fin else 0) | rsv | opcode,))
    if n < 126:
        head += bytes((b1 | n,))
    elif n < 65536:
        head += bytes((b1 | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((b1 | 127,)) + n.to_bytes(8, "big")
    return head + (mask + apply_mask(payload, mask) if mask else payload)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One client frame (opcode, unmasked payload); asserts the client masked it, as RFC 6455 requires."""
    b0, payload = await read_frame_bits(reader)
    return b0 & 0x0F, payload


async def read_frame_bits(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One client frame (its whole first byte: FIN, RSV bits, opcode; unmasked payload)."""
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4)
    return b0, apply_mask(await reader.readexactly(n), mask)


def accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def switching(head: bytes, extra: bytes = b"") -> bytes:
    """The 101 answer to a handshake request ``head``."""
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept(key) + b"\r\n" + extra + b"\r\n")


class Peer:
    """One loopback server; each connection gets the 101 (or ``answer(head)``), then ``script``."""

    def __init__(self, script: Script | None = None, answer: Callable[[bytes], bytes] | None = switching,
                 tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.answer = answer
        self.tls = tls
        self.heads: list[bytes] = []
        self.done: asyncio.Future | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        self.done = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'wss' if self.tls else 'ws'}://{'localhost' if self.tls else '127.0.0.1'}:{port}/v1/responses"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            if self.answer is not None:
                writer.write(self.answer(head))
            if self.script is not None:
                await self.script(reader, writer)
            if not self.done.done():
                self.done.set_result(None)
        except Exception as exc:  # noqa: BLE001 -- the test sees whatever went wrong on the server side
            if not self.done.done():
                self.done.set_exception(exc)
        finally:
            writer.close()
