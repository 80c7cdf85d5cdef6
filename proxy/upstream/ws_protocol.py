"""A lean WebSocket client connection for upstream sockets, built like the HTTP pool's.

Why not the ``websockets`` asyncio client: it parses each frame through generator
coroutines, queues it, and hands messages over one ``recv()`` (one future, one task switch)
at a time, which made a turn over an upstream socket cost ~30% more proxy CPU than the same
turn over HTTP. Here an ``asyncio.Protocol`` parses the server's frames (unmasked, so a few
byte reads each) straight out of each read and queues the complete messages; the reader is
woken once per read and takes every message that arrived in it, so a burst of events is
relayed as one batch. Client frames are masked with ``websockets.speedups`` (C).

Scope is what a provider's Responses WebSocket mode needs: text and binary messages
(fragmented or not), ping/pong (answered, and sent every ``PING_INTERVAL_S`` on a quiet
socket; no pong by the next ping closes it), the close handshake, no extensions (the pool
never offered per-message-deflate), ``max_size`` per message.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import itertools
import os
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from websockets.speedups import apply_mask

from proxy.call import UpstreamClosed, UpstreamConnectError, UpstreamError

PING_INTERVAL_S = 20.0
MAX_SIZE = 64 * 1024 * 1024  # bytes of one message; a Responses event with a whole long answer fits
_MAX_HEAD = 65536  # bytes of the handshake response's status line and headers
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TEXT, _BINARY, _CONTINUATION, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
_HIGH_WATER = 256  # queued messages before reading pauses (a reader that stopped taking them)


class FrameError(UpstreamError):
    """The provider broke the WebSocket protocol; ``code`` is the close code Laneway answers with."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


class UpstreamSocket(asyncio.Protocol):
    """One client WebSocket connection; ``messages`` holds the complete messages not yet read."""

    __slots__ = ("_buf", "_handshake", "_key", "_need", "_open", "_parts", "_paused", "_ping_timer", "_pinged",
                 "_size", "_waiter", "error", "hold", "max_size", "messages", "transport")

    def __init__(self, key: bytes, max_size: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.messages: collections.deque[bytes] = collections.deque()
        self.error: UpstreamError | None = None  # set once: the connection is over
        # messages it is true for do not wake the reader by themselves (a turn's prelude events,
        # which arrive one by one just before the output they are relayed with)
        self.hold: Callable[[bytes], bool] | None = None
        self.max_size = max_size
        self._buf = bytearray()
        self._need = 0  # bytes the buffered partial frame needs before parsing can progress
        self._parts: list[bytes] | None = None  # frames of a fragmented message so far
        self._size = 0
        self._waiter: asyncio.Future | None = None
        self._handshake: asyncio.Future | None = asyncio.get_running_loop().create_future()
        self._key = key
        self._open = False
        self._paused = False
        self._pinged = False
        self._ping_timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        """Handshake done and nothing has ended the connection (it can take a turn)."""
        return self._open and self.error is None

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._handshake is not None:
            self._buf += data
            self._handshake_received()
            return
        self._pinged = False  # the peer is alive
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:  # the frame being assembled is not whole yet: nothing to parse
                return
            data, self._buf = bytes(self._buf), bytearray()
        queued = len(self.messages)
        try:
            end = self._parse(data)
        except FrameError as exc:
            self._close(exc.code)
            self.fail(exc)
            return
        if end < len(data):
            self._buf = bytearray(data[end:])
        if len(self.messages) > queued:
            if len(self.messages) > _HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            if self.hold is None or not all(map(self.hold, itertools.islice(self.messages, queued, None))):
                self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        self.fail(UpstreamClosed("upstream socket closed" + (f" ({exc})" if exc else "")))

    # -- reading ------------------------------------------------------------
    async def readable(self) -> None:
        """Until a message is queued that ``hold`` does not hold back; raises the connection's error
        once no such message is left."""
        while not self.messages or (self.hold is not None and all(map(self.hold, self.messages))):
            if self.error is not None:
                raise self.error
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    async def recv(self) -> bytes:
        if not self.messages:
            await self.readable()
        return self.messages.popleft()

    # -- writing ------------------------------------------------------------
    def send_text(self, payload: bytes) -> None:
        """One masked text frame; raises UpstreamClosed if the connection is over (nothing was sent)."""
        if not self.open or self.transport is None or self.transport.is_closing():
            raise self.error or UpstreamClosed("upstream socket is not open")
        self._write(_TEXT, payload)

    def _write(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        self.transport.writelines((head + mask, apply_mask(payload, mask)))  # type: ignore[union-attr]

    # -- ending -------------------------------------------------------------
    def fail(self, error: UpstreamError) -> None:
        """End the connection with ``error`` (kept if it is the first): the reader gets it once the
        queued messages are read, and the transport is dropped."""
        if self.error is None:
            self.error = error
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(UpstreamConnectError(str(self.error)))
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        """Drop the connection now, without a close handshake: how a cancelled turn reaches the provider."""
        self.fail(UpstreamClosed("upstream socket aborted"))

    def close(self) -> None:
        """End an idle connection politely: a close frame (1000), then the transport closes after it."""
        if self.open and self.transport is not None and not self.transport.is_closing():
            self._close(1000)
            transport = self.transport
            self.transport = None  # close (flushing the close frame) instead of fail()'s abort
            self.fail(UpstreamClosed("upstream socket closed by Laneway"))
            transport.close()
        else:
            self.abort()

    def _close(self, code: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write(_CLOSE, code.to_bytes(2, "big"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # readable() looks again: messages first, then the error

    # -- frames -------------------------------------------------------------
    def _parse(self, buf: bytes) -> int:
        """Queue every complete message in ``buf``, answer control frames; the offset parsed up to
        (``_need``: how many bytes from there the next frame needs at least)."""
        pos, size, messages = 0, len(buf), self.messages
        while size - pos >= 2:
            b0, n = buf[pos], buf[pos + 1]
            if b0 == 0x81 and n < 127 and self._parts is None:  # a whole text message: nearly every frame
                head = 2
                if n == 126:
                    if size - pos < 4:
                        self._need = 4
                        return pos
                    n, head = buf[pos + 2] << 8 | buf[pos + 3], 4
                if n > self.max_size:
                    raise FrameError(f"upstream socket message exceeds {self.max_size} bytes", 1009)
                end = pos + head + n
                if end > size:
                    self._need = end - pos
                    return pos
                messages.append(buf[pos + head : end])
                pos = end
                continue
            if n & 0x80:
                raise FrameError("upstream socket sent a masked frame")
            if b0 & 0x70:
                raise FrameError("upstream socket sent a frame with reserved bits set (no extension was negotiated)")
            n &= 0x7F
            head = 2
            if n >= 126:
                head = 4 if n == 126 else 10
                if size - pos < head:
                    self._need = head
                    return pos
                n = int.from_bytes(buf[pos + 2 : pos + head], "big")
            opcode = b0 & 0x0F
            if opcode < _CLOSE and self._size + n > self.max_size:
                raise FrameError(f"upstream socket message exceeds {self.max_size} bytes", 1009)
            end = pos + head + n
            if end > size:
                self._need = end - pos
                return pos
            payload = buf[pos + head : end]
            pos = end
            if opcode >= _CLOSE:
                if not b0 & 0x80 or n > 125:
                    raise FrameError("upstream socket sent a fragmented or oversized control frame")
                self._control(opcode, payload)
                if self.error is not None:
                    return pos
                continue
            if opcode == _CONTINUATION:
                if self._parts is None:
                    raise FrameError("upstream socket sent a continuation frame outside a message")
                self._parts.append(payload)
            elif opcode in (_TEXT, _BINARY):
                if self._parts is not None:
                    raise FrameError("upstream socket started a message inside a fragmented one")
                if b0 & 0x80:
                    messages.append(payload)
                    continue
                self._parts = [payload]
            else:
                raise FrameError(f"upstream socket sent an unknown opcode {opcode:#x}")
            self._size += n
            if b0 & 0x80:
                messages.append(b"".join(self._parts))
                self._parts, self._size = None, 0
        self._need = 2
        return pos

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            self._write(_PONG, payload)
        elif opcode == _CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._close(1000 if code == 1005 else code)  # the handshake's reply, echoing the code
            transport = self.transport
            self.transport = None  # close after the reply instead of aborting
            reason = payload[2:].decode("utf-8", "replace")
            self.fail(UpstreamClosed(f"upstream socket closed by the provider ({code}{', ' + reason if reason else ''})"))
            if transport is not None:
                transport.close()
        # a pong: data_received already noted that the peer is alive

    def _keepalive(self) -> None:
        """Every PING_INTERVAL_S: a socket that answered nothing since the last ping is dead."""
        if self.error is not None:
            return
        if self._pinged:
            self.fail(UpstreamClosed(f"upstream socket answered no ping for {PING_INTERVAL_S:.0f}s"))
            return
        self._pinged = True
        self._write(_PING, os.urandom(4))
        self._ping_timer = asyncio.get_running_loop().call_later(PING_INTERVAL_S, self._keepalive)

    # -- handshake ----------------------------------------------------------
    def _handshake_received(self) -> None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEAD:
                self.fail(UpstreamConnectError("upstream WebSocket handshake response is too large"))
            return
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        waiter, self._handshake = self._handshake, None
        problem = _check_response(head, self._key)
        if problem is not None:
            self.fail(UpstreamConnectError(problem))
            waiter.set_exception(self.error)  # type: ignore[arg-type]
            return
        self._open = True
        self._ping_timer = asyncio.get_running_loop().call_later(PING_INTERVAL_S, self._keepalive)
        waiter.set_result(None)
        if self._buf:  # frames sent right behind the 101
            data, self._buf = bytes(self._buf), bytearray()
            self.data_received(data)


def _check_response(head: list[str], key: bytes) -> str | None:
    """Why the handshake response does not open a WebSocket (RFC 6455 4.2.2), or None."""
    status = head[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        return f"upstream WebSocket handshake answered {' '.join(status[1:]) or 'nothing'}"
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
    if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in headers.get("connection", "").lower():
        return "upstream WebSocket handshake: 101 without Upgrade: websocket"
    if headers.get("sec-websocket-accept") != accept:
        return "upstream WebSocket handshake: wrong Sec-WebSocket-Accept"
    if headers.get("sec-websocket-extensions"):
        return "upstream WebSocket handshake: an extension that was not offered"
    return None


async def connect(url: str, headers: dict[str, str], timeout: float, *, ssl_context: ssl.SSLContext | None = None,
                  max_size: int = MAX_SIZE) -> UpstreamSocket:
    """Open a WebSocket to ``url`` (ws:// or wss://) sending ``headers`` on the handshake.

    Raises UpstreamConnectError for anything that keeps it from opening within ``timeout``
    (refused, TLS, a non-101 answer, a bad Sec-WebSocket-Accept).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise UpstreamConnectError(f"not a ws(s) URL: {url.split('?')[0]!r}")
    tls = scheme == "wss"
    host, port = parts.hostname, parts.port or (443 if tls else 80)
    if tls and ssl_context is None:
        ssl_context = ssl.create_default_context()
    key = base64.b64encode(os.urandom(16))
    host_header = host if port == (443 if tls else 80) else f"{host}:{port}"
    lines = [f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1", f"Host: {host_header}",
             "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
             "Sec-WebSocket-Version: 13", *(f"{name}: {value}" for name, value in headers.items()),
             "User-Agent: laneway"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()
    sock: UpstreamSocket | None = None
    try:
        async with asyncio.timeout(timeout):
            _, sock = await loop.create_connection(lambda: UpstreamSocket(key, max_size), host, port,
                                                   ssl=ssl_context if tls else None,
                                                   server_hostname=host if tls else None)
            sock.transport.write(request)  # type: ignore[union-attr]
            await sock._handshake  # type: ignore[misc]
    except TimeoutError:
        if sock is not None:
            sock.abort()
        raise UpstreamConnectError(f"WebSocket connect to {host}:{port} timed out after {timeout:.1f}s") from None
    except OSError as exc:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
        raise UpstreamConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    except BaseException:
        if sock is not None:
            sock.abort()
        raise
    return sock
