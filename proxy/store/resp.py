"""A lean pipelined RESP connection for the one Redis call on the request path.

redis-py's asyncio pipeline spends more CPU per call (connection checkout, command
objects, response callbacks) than Redis spends running the admission script. This
connection does only what that call needs: write a batch of commands as one buffer,
read the replies in order with hiredis, and tell an outage from back-pressure: a
refused connect, a dropped connection or a Redis silent past the timeout fails every
call in flight (the next call reconnects), while a slow reply under load is waited for.
Errors are redis-py's exception classes, so callers handle both clients alike.
"""
from __future__ import annotations

import asyncio
import collections

import hiredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

Command = tuple  # (b"EVALSHA", sha, numkeys, *keys, *args): str, bytes or int items

SILENT_TIMEOUTS = 3  # timeouts in a row with replies owed and none arriving: Redis is gone, not busy


def _pack(commands: list[Command]) -> bytes:
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for item in command:
            data = item if isinstance(item, bytes) else str(item).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _reply(value: object) -> object:
    if isinstance(value, hiredis.ReplyError):
        message = str(value)
        return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
    return value


class _Call:
    """One ``execute``: its future and the replies read for it so far."""

    __slots__ = ("future", "count", "replies")

    def __init__(self, future: asyncio.Future, count: int) -> None:
        self.future = future
        self.count = count
        self.replies: list = []


class _Protocol(asyncio.Protocol):
    """Replies are matched to calls in order; a call whose caller went away (cancelled) still
    takes its replies off the stream, so the next call reads its own.

    The watchdog measures silence, not the age of a call: Redis owing replies and sending none
    for ``SILENT_TIMEOUTS`` timeouts in a row is an outage (every call in flight fails and the
    socket is dropped). A reply that is late because many calls are queued ahead of it, or
    because Redis paused for less than that (a slow script, a fork, a busy host), is
    back-pressure and is waited for: the queue drains at Redis's pace."""

    def __init__(self, timeout: float) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[_Call] = collections.deque()
        self.lost = False
        self._loop = asyncio.get_running_loop()
        self._silence = timeout * SILENT_TIMEOUTS
        self._heard = 0.0  # loop time of the last reply, or of the call that found nothing owed
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, count: int) -> asyncio.Future:
        call = _Call(self._loop.create_future(), count)
        if not self.waiting:
            self._heard = self._loop.time()
        self.waiting.append(call)
        self.transport.write(data)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._heard + self._silence, self._watch)
        return call.future

    def _watch(self) -> None:
        self._watchdog = None
        if self.lost or not self.waiting:
            return
        due = self._heard + self._silence
        if self._loop.time() < due:
            self._watchdog = self._loop.call_at(due, self._watch)
        else:
            self.fail(TimeoutError(f"Redis owed replies and sent nothing for {self._silence * 1000:.0f} ms"))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        heard = False
        try:
            while self.waiting:
                value = self.reader.gets()
                if value is False:
                    break
                heard = True
                call = self.waiting[0]
                call.replies.append(_reply(value))
                if len(call.replies) == call.count:
                    self.waiting.popleft()
                    if not call.future.done():
                        call.future.set_result(call.replies)
        except hiredis.ProtocolError as exc:
            self.fail(ConnectionError(f"Redis protocol error: {exc}"))
        if heard:
            self._heard = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError("Redis closed the connection"))

    def fail(self, error: Exception) -> None:
        self.lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiting:
            call = self.waiting.popleft()
            if not call.future.done():
                call.future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class LeanRedis:
    """One multiplexed connection to a standalone Redis; ``execute`` sends a pipeline.

    ``timeout_s`` bounds a connect; Redis may stay silent ``SILENT_TIMEOUTS`` times as long while
    it owes replies before the calls in flight fail.
    """

    def __init__(self, host: str | None, port: int, path: str | None, setup: list[Command], timeout_s: float) -> None:
        self._host, self._port, self._path = host, port, path
        self._setup = setup  # AUTH / SELECT, sent first on every new connection
        self._timeout = timeout_s
        self._conn: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    async def _connection(self) -> _Protocol:
        conn = self._conn
        if conn is not None and not conn.lost:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            if self._path is not None:
                connect = loop.create_unix_connection(self._protocol, self._path)
            else:
                connect = loop.create_connection(self._protocol, self._host, self._port)
            _, conn = await asyncio.wait_for(connect, self._timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionError(f"cannot connect to Redis: {exc or 'timed out'}") from None
        self._conn = conn
        if self._setup:
            for reply in await self.execute(self._setup):
                if isinstance(reply, Exception):
                    conn.fail(ConnectionError(f"Redis refused the connection setup: {reply}"))
                    raise reply
        return conn

    def _protocol(self) -> _Protocol:
        return _Protocol(self._timeout)

    async def execute(self, commands: list[Command]) -> list:
        """Replies in order; error replies come back as exception instances (not raised)."""
        conn = self._conn if self._conn is not None and not self._conn.lost else await self._connection()
        return await conn.send(_pack(commands), len(commands))

    async def aclose(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
