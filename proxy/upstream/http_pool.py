"""A small keep-alive HTTP/1.1 client pool built on asyncio protocols and httptools.

Why not httpx or aiohttp: the proxy's budget is well under a millisecond of CPU per
request, and a general-purpose client spends most of that on objects we never use.
This client does one thing: send a request we already hold as bytes, hand back the
status and headers, then the body as the chunks arrive — with timeouts on connect,
first byte and the gap between chunks, and connections reused per origin.
"""
from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from proxy.call import UpstreamClosed, UpstreamConnectError, UpstreamError, UpstreamTimeout
from proxy.upstream.tls import client_context


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, base_url: str) -> "Origin":
        parts = urlsplit(base_url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        return (self.host if self.port == default else f"{self.host}:{self.port}").encode()


class _Connection(asyncio.Protocol):
    """One upstream TCP connection; parses responses and buffers body chunks for one reader."""

    __slots__ = (
        "transport", "parser", "pool", "status", "headers", "chunks", "complete", "keep_alive",
        "closed", "error", "_headers_waiter", "_body_waiter", "_paused", "_got_bytes", "sink", "body_at", "loop",
        "_batch", "hold_s", "_held", "refused",
    )

    _HIGH_WATER = 32

    def __init__(self, pool: "OriginPool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()  # kept: asking for the running loop costs a getpid() syscall
        self.closed = False
        self.error: UpstreamError | None = None
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.complete = False
        self.keep_alive = False
        self._headers_waiter: asyncio.Future | None = None
        self._body_waiter: asyncio.Future | None = None
        self._paused = False
        self._got_bytes = False
        self.sink: Callable[[bytes], bool] | None = None  # set while Response.relay hands chunks on as they are parsed
        self.body_at = 0.0  # loop time of the last chunk given to the sink
        self._batch: list[bytes] | None = None  # the sink's chunks parsed from one read, handed on as one
        self.refused = False  # the sink said "not now" to what it was handed: the relay owes a drain
        self.hold_s = 0.0  # while relaying: reading pauses this long after each read handed to the sink
        self._held: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        relaying = self.sink is not None
        if relaying:
            self._batch = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("upstream answered with a protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed HTTP response from upstream: {exc}"))
        finally:
            if relaying:
                self._hand_on()
        if relaying and self.hold_s and not self.complete and self._held is None and self.transport is not None:
            # what arrives meanwhile waits in the socket and comes as one read: fewer wake-ups per token
            self.transport.pause_reading()
            self._held = self.loop.call_later(self.hold_s, self.release_hold)

    def _hand_on(self) -> None:
        """The body parsed from one read goes to the sink in one call (one scan, one client write)."""
        batch, self._batch = self._batch, None
        sink = self.sink
        if not batch or sink is None:
            return
        if not sink(batch[0] if len(batch) == 1 else b"".join(batch)):  # the client is not keeping up:
            self.sink = None                                            # the relay waits for it, chunks queue
            self.refused = True
            self._wake_body()

    def release_hold(self) -> None:
        """Reading resumes (the hold is over, or the relay ended), unless the chunk queue paused it."""
        if self._held is not None:
            self._held.cancel()
            self._held = None
            if not self._paused and not self.closed and self.transport is not None:
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(UpstreamClosed("upstream closed the connection before the response ended"))
        self.pool._forget(self)

    # -- httptools callbacks ------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        # asked now: once the message is complete the parser has reset and always says no
        self.keep_alive = self.parser.should_keep_alive()
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._batch is not None:  # a read while relaying (data_received set it up for the sink)
            self.body_at = self.loop.time()
            self._batch.append(body)
            return
        self.chunks.append(body)
        if len(self.chunks) > self._HIGH_WATER and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake_body()

    # -- helpers ------------------------------------------------------------
    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        for waiter in (self._headers_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now: how a cancelled request reaches the upstream."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Response:
    """Status and headers of an upstream response; the body is read once, then the connection is released.

    One timer at a time bounds the body, for both ``idle_s`` (the reader waited that long for a
    chunk) and ``total_s``: it is armed no later than either could expire and, when it fires
    early, re-armed for the next moment one could. A chunk costs no timer of its own; a body that
    had arrived whole with its headers costs none at all.
    """

    __slots__ = ("status", "headers", "_conn", "_idle_s", "_released", "_deadline", "_timer", "_waiting_since", "_loop",
                 "_relaying")

    def __init__(self, conn: _Connection, idle_s: float, deadline: float | None, loop: asyncio.AbstractEventLoop) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self._conn = conn
        self._idle_s = idle_s
        self._released = False
        self._deadline = deadline  # loop time the exchange ends at (the request's total_s), however busy the stream
        self._loop = loop
        self._waiting_since: float | None = None  # when the reader began waiting for the next chunk
        self._timer: asyncio.TimerHandle | None = None
        self._relaying = False  # relay() waits while the sink takes chunks: the last one's time is conn.body_at
        if not conn.complete:
            self._arm(loop.time())

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def _arm(self, now: float) -> None:
        """Arm the body's timer at the earliest moment idle_s (of a wait starting now or earlier) or total_s can expire."""
        since = self._conn.body_at if self._relaying else self._waiting_since
        due = (now if since is None else since) + self._idle_s
        if self._deadline is not None and self._deadline < due:
            due = self._deadline
        self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        conn = self._conn
        if self._released or conn.complete:
            return
        now = self._loop.time()
        if self._deadline is not None and now >= self._deadline - _TICK_S:
            _past_deadline(conn)
            return
        since = conn.body_at if self._relaying else self._waiting_since
        waiter = conn._body_waiter
        if since is not None and waiter is not None and now - since >= self._idle_s - _TICK_S:
            _expire(waiter, "upstream sent nothing for %.1fs" % self._idle_s)
            return
        self._arm(now)

    async def iter_body(self) -> AsyncIterator[bytes]:
        """The body as it arrives; chunks that arrived together come as one (never held for more)."""
        conn = self._conn
        chunks = conn.chunks
        loop = self._loop
        try:
            while True:
                if chunks:
                    yield _take_queued(conn)
                    continue
                if conn.complete:
                    return
                if conn.error is not None:
                    raise conn.error
                waiter = conn._body_waiter = loop.create_future()
                self._waiting_since = loop.time()
                try:
                    await waiter
                finally:
                    self._waiting_since = None
                    conn._body_waiter = None
        finally:
            self.release()

    async def relay(self, sink: Callable[[bytes], bool], drain: Callable[[], Awaitable[None]], hold_s: float = 0.0) -> None:
        """Hand the body to ``sink`` as it arrives, from the upstream connection's read callback:
        no task wake-up, iterator step or queue per chunk, and what one read brought in one call.
        ``sink`` returns False when its client is not keeping up; then the relay awaits ``drain()``
        while chunks queue (reading pauses past the high-water mark, so a stalled client stalls the
        upstream, never fills memory). ``hold_s`` > 0 pauses reading that long after each read
        (the first chunk is never held), so a stream paced token by token is relayed a few tokens
        a wake-up: less CPU per token, each token up to ``hold_s`` later.
        Timeouts, errors and release are as for ``iter_body``."""
        conn = self._conn
        chunks = conn.chunks
        loop = self._loop
        conn.hold_s = hold_s
        try:
            while True:
                if chunks:
                    if not sink(_take_queued(conn)):
                        await drain()
                    continue
                if conn.complete:
                    return
                if conn.error is not None:
                    raise conn.error
                waiter = conn._body_waiter = loop.create_future()
                conn.body_at = loop.time()
                conn.sink, self._relaying = sink, True
                try:
                    await waiter
                finally:
                    conn.sink, self._relaying, conn._body_waiter = None, False, None
                if conn.refused:  # woken by a sink that said "not now" (the last read's chunks included)
                    conn.refused = False
                    await drain()
        finally:
            conn.hold_s = 0.0
            conn.release_hold()
            self.release()

    async def read(self) -> bytes:
        conn = self._conn
        if conn.complete:  # arrived whole with its headers, the usual short answer: no generator, no waiting
            body = b"".join(conn.chunks)
            conn.chunks.clear()
            self.release()
            return body
        parts = [chunk async for chunk in self.iter_body()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def abandon(self) -> bytes:
        """The client went away: drop the connection now and return the body bytes that had already
        arrived but were not relayed (the provider sent, and bills, those tokens too)."""
        conn = self._conn
        if self._released and not conn.closed:  # read to the end and back in the pool: nothing is left
            return b""
        rest = b"".join(conn.chunks)
        conn.chunks.clear()
        self._released = True
        self._end_timer()
        conn.abort()
        return rest

    def release(self) -> None:
        """Return the connection to the pool if the exchange finished cleanly, else drop it."""
        if self._released:
            return
        self._released = True
        self._end_timer()
        conn = self._conn
        if conn.complete and not conn.closed and conn.error is None and conn.keep_alive and not conn.transport.is_closing():
            if conn._paused:
                conn.transport.resume_reading()
            conn.pool._put_back(conn)
        else:
            conn.abort()

    def _end_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# The loop's clock has millisecond steps: a timer may fire up to one early.
_TICK_S = 0.001


def _take_queued(conn: _Connection) -> bytes:
    """What queued on ``conn``, as one chunk; reading resumes if the queue had paused it."""
    chunks = conn.chunks
    if len(chunks) == 1:
        chunk = chunks.popleft()
    else:
        chunk = b"".join(chunks)
        chunks.clear()
    if conn._paused and conn.transport:
        conn._paused = False
        conn.transport.resume_reading()
    return chunk


def _expire(waiter: asyncio.Future, message: str) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(message))


def _no_first_byte(waiter: asyncio.Future, first_byte_s: float) -> None:
    _expire(waiter, "upstream sent no response within %.1fs" % first_byte_s)


def _past_deadline(conn: _Connection) -> None:
    if not conn.complete:
        conn._fail(UpstreamTimeout("upstream response exceeded the deployment's timeouts.total_s"))


class OriginPool:
    """Idle keep-alive connections to one scheme://host:port."""

    def __init__(self, origin: Origin, *, max_idle: int = 256, ssl_context: ssl.SSLContext | None = None) -> None:
        self.origin = origin
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._ssl = (ssl_context or client_context(None)) if origin.scheme == "https" else None

    def _forget(self, conn: _Connection) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def _put_back(self, conn: _Connection) -> None:
        if len(self._idle) >= self.max_idle:
            conn.abort()
            return
        conn._reset()
        self._idle.append(conn)

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self), self.origin.host, self.origin.port,
                    ssl=self._ssl, server_hostname=self.origin.host if self._ssl else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamConnectError(f"connect to {self.origin.host}:{self.origin.port} timed out after {timeout:.1f}s") from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {self.origin.host}:{self.origin.port}: {exc.strerror or exc}") from None
        return conn

    async def request(
        self,
        head: bytes,
        body: bytes,
        *,
        connect_s: float,
        first_byte_s: float,
        idle_s: float,
        total_s: float | None = None,
    ) -> Response:
        """Send ``head`` (request line + headers, ending in a blank line) and ``body``; wait for headers.

        ``total_s`` bounds the whole exchange from here to the body's last byte: past it the
        body iterator raises UpstreamTimeout (after the chunks that had arrived) and the
        connection is dropped.

        A reused connection that the upstream had already closed (closing, failing the write, or
        closed before a single response byte arrived: the request never reached it) is retried
        once on a fresh one.
        """
        deadline = None if total_s is None else asyncio.get_running_loop().time() + total_s
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else await self._connect(connect_s)
        try:
            return await self._exchange(conn, head, body, first_byte_s, idle_s, deadline)
        except UpstreamClosed:
            if not (reused and not conn._got_bytes):
                raise
        conn = await self._connect(connect_s)
        return await self._exchange(conn, head, body, first_byte_s, idle_s, deadline)

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes, first_byte_s: float, idle_s: float,
                        deadline: float | None) -> Response:
        transport = conn.transport
        if conn.closed or transport is None or transport.is_closing():  # the upstream's FIN may not be handled yet
            raise UpstreamClosed("pooled connection was closed")
        loop = conn.loop
        waiter = conn._headers_waiter = loop.create_future()
        try:
            transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                transport.write(body)
        except (RuntimeError, OSError) as exc:  # closed under us: the request never reached the upstream
            conn._headers_waiter = None
            conn.abort()
            raise UpstreamClosed(f"connection closed before the request was sent: {exc}") from None
        # one timer until the headers: the first byte's bound, or total_s when that comes first
        first_at = loop.time() + first_byte_s
        if deadline is not None and deadline <= first_at:
            timer = loop.call_at(deadline, _past_deadline, conn)
        else:
            timer = loop.call_at(first_at, _no_first_byte, waiter, first_byte_s)
        try:
            await waiter
        except BaseException:
            conn.abort()
            raise
        finally:
            timer.cancel()
            conn._headers_waiter = None
        return Response(conn, idle_s, deadline, loop)

    def close(self) -> None:
        for conn in self._idle:
            conn.abort()
        self._idle.clear()


class UpstreamPools:
    """One OriginPool per origin and trust, created on first use."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, str, int, ssl.SSLContext | None], OriginPool] = {}

    def get(self, origin: Origin, ca_file: str | None = None) -> OriginPool:
        """``ca_file``: the deployment's own CA bundle (its pool is not shared with system-trust ones)."""
        ctx = client_context(ca_file) if ca_file and origin.scheme == "https" else None  # shared per file
        key = (origin.scheme, origin.host, origin.port, ctx)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = OriginPool(origin, ssl_context=ctx)
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
