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
socket; no pong by the next ping closes it), the close handshake, permessage-deflate when the
deployment asks for it (``proxy.upstream.ws_deflate``; no other extension), ``max_size`` per
message (inflated size).
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
from proxy.upstream.tls import client_context
from proxy.upstream.ws_deflate import OFFER, Deflate, InflateError, accept

PING_INTERVAL_S = 20.0
MAX_SIZE = 64 * 1024 * 1024  # bytes of one message; a Responses event with a whole long answer fits
_MAX_HEAD = 65536  # bytes of the handshake response's status line and headers
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TEXT, _BINARY, _CONTINUATION, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
_RSV1 = 0x40  # in the first byte: a compressed message (permessage-deflate)
_HIGH_WATER = 256  # queued messages before reading pauses (a reader that stopped taking them)


class FrameError(UpstreamError):
    """The provider broke the WebSocket protocol; ``code`` is the close code Laneway answers with."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


class UpstreamSocket(asyncio.Protocol):
    """One client WebSocket connection; ``messages`` holds the complete messages not yet read."""

    __slots__ = ("_buf", "_handshake", "_inflating", "_key", "_need", "_offered", "_open", "_parts", "_paused",
                 "_ping_timer", "_pinged", "_size", "_waiter", "deflate", "error", "hold", "max_size", "messages",
                 "transport")

    def __init__(self, key: bytes, max_size: int, offered_deflate: bool = False) -> None:
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
        self._size = 0  # bytes of the fragmented message so far (inflated, if it is compressed)
        self._inflating = False  # the fragmented message being assembled is compressed
        self._offered = offered_deflate
        self.deflate: Deflate | None = None  # set by the handshake when the provider accepted compression
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
        if self.deflate is not None and (compressed := self.deflate.deflate(payload)) is not None:
            self._write(_RSV1 | _TEXT, compressed)
        else:
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
        pos, size, messages, max_size = 0, len(buf), self.messages, self.max_size
        while size - pos >= 2:
            b0, n = buf[pos], buf[pos + 1]
            if b0 == 0x81 and n < 127 and self._parts is None:  # a whole text message: nearly every frame
                head = 2
                if n == 126:
                    if size - pos < 4:
                        self._need = 4
                        return pos
                    n, head = buf[pos + 2] << 8 | buf[pos + 3], 4
                if n > max_size:
                    raise FrameError(f"upstream socket message exceeds {max_size} bytes", 1009)
                end = pos + head + n
                if end > size:
                    self._need = end - pos
                    return pos
                messages.append(buf[pos + head : end])
                pos = end
                continue
            if n & 0x80:
                raise FrameError("upstream socket sent a masked frame")
            opcode, rsv = b0 & 0x0F, b0 & 0x70
            if rsv and (rsv != _RSV1 or self.deflate is None or opcode not in (_TEXT, _BINARY)):
                raise FrameError("upstream socket sent a frame with reserved bits set that no negotiated extension "
                                 "allows")
            n &= 0x7F
            head = 2
            if n >= 126:
                head = 4 if n == 126 else 10
                if size - pos < head:
                    self._need = head
                    return pos
                n = int.from_bytes(buf[pos + 2 : pos + head], "big")
            # a compressed message is held to max_size as it inflates; its frames only buffer whole
            if opcode < _CLOSE and (0 if rsv or self._inflating else self._size) + n > max_size:
                raise FrameError(f"upstream socket message exceeds {max_size} bytes", 1009)
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
            fin = b0 & 0x80
            if opcode == _CONTINUATION:
                if self._parts is None:
                    raise FrameError("upstream socket sent a continuation frame outside a message")
            elif opcode in (_TEXT, _BINARY):
                if self._parts is not None:
                    raise FrameError("upstream socket started a message inside a fragmented one")
                if fin and not rsv:
                    messages.append(payload)
                    continue
                self._parts, self._inflating = [], bool(rsv)
            else:
                raise FrameError(f"upstream socket sent an unknown opcode {opcode:#x}")
            if self._inflating:
                try:
                    payload = self.deflate.inflate(payload, bool(fin), max_size - self._size)  # type: ignore[union-attr]
                except InflateError as exc:
                    if exc.code == 1009:
                        raise FrameError(f"upstream socket message exceeds {max_size} bytes inflated", 1009) from None
                    raise FrameError(str(exc), exc.code) from None
            self._parts.append(payload)  # type: ignore[union-attr]
            self._size += len(payload)
            if fin:
                messages.append(self._parts[0] if len(self._parts) == 1 else b"".join(self._parts))  # type: ignore[index]
                self._parts, self._size, self._inflating = None, 0, False
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
        if problem is None and (extensions := _header(head, "sec-websocket-extensions")):
            if not self._offered:
                problem = "upstream WebSocket handshake: an extension that was not offered"
            else:
                try:
                    self.deflate = accept(extensions)
                except ValueError as exc:
                    problem = f"upstream WebSocket handshake: {exc}"
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
    expected = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
    if _header(head, "upgrade").lower() != "websocket" or "upgrade" not in _header(head, "connection").lower():
        return "upstream WebSocket handshake: 101 without Upgrade: websocket"
    if _header(head, "sec-websocket-accept") != expected:
        return "upstream WebSocket handshake: wrong Sec-WebSocket-Accept"
    return None


def _header(head: list[str], name: str) -> str:
    """Every ``name`` header line of the response, joined with ", " (RFC 9110 5.3); "" if none."""
    values = []
    for line in head[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            values.append(value.strip())
    return ", ".join(values)


async def connect(url: str, headers: dict[str, str], timeout: float, *, ssl_context: ssl.SSLContext | None = None,
                  max_size: int = MAX_SIZE, deflate: bool = False) -> UpstreamSocket:
    """Open a WebSocket to ``url`` (ws:// or wss://) sending ``headers`` on the handshake;
    ``deflate`` offers permessage-deflate (a provider that declines gets plain frames).

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
        ssl_context = client_context(None)
    key = base64.b64encode(os.urandom(16))
    host_header = host if port == (443 if tls else 80) else f"{host}:{port}"
    lines = [f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1", f"Host: {host_header}",
             "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
             "Sec-WebSocket-Version: 13", *([f"Sec-WebSocket-Extensions: {OFFER}"] if deflate else ()),
             *(f"{name}: {value}" for name, value in headers.items()),
             "User-Agent: laneway"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()
    sock: UpstreamSocket | None = None
    try:
        async with asyncio.timeout(timeout):
            _, sock = await loop.create_connection(lambda: UpstreamSocket(key, max_size, deflate), host, port,
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
