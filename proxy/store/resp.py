"""A lean pipelined RESP connection for the one Redis call on the request path.

redis-py's asyncio pipeline spends more CPU per call (connection checkout, command
objects, response callbacks) than Redis spends running the admission script. This
connection does only what that call needs: write a batch of commands as one buffer,
read the replies in order with hiredis, fail everything in flight on a timeout or a
dropped connection (replies would no longer line up), reconnect on the next call.
Errors are redis-py's exception classes, so callers handle both clients alike.
"""
from __future__ import annotations

import asyncio
import collections
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

Command = tuple  # (b"EVALSHA", sha, numkeys, *keys, *args): str, bytes or int items


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


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while self.waiting:
                value = self.reader.gets()
                if value is False:
                    return
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(_reply(value))
        except hiredis.ProtocolError as exc:
            self.fail(ConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError("Redis closed the connection"))

    def fail(self, error: Exception) -> None:
        self.lost = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class LeanRedis:
    """One multiplexed connection to a standalone Redis; ``execute`` sends a pipeline."""

    def __init__(self, host: str | None, port: int, path: str | None, setup: list[Command], timeout_s: float) -> None:
        self._host, self._port, self._path = host, port, path
        self._setup = setup  # AUTH / SELECT, sent first on every new connection
        self._timeout = timeout_s
        self._conn: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> "LeanRedis | None":
        """For redis:// and unix:// URLs; None for anything else (TLS stays with redis-py)."""
        parts = urlsplit(url)
        setup: list[Command] = []
        if parts.password is not None:
            auth = (b"AUTH", unquote(parts.username), unquote(parts.password)) if parts.username else (b"AUTH", unquote(parts.password))
            setup.append(auth)
        if parts.scheme == "redis":
            db = parts.path.lstrip("/")
            host, port, path = parts.hostname or "127.0.0.1", parts.port or 6379, None
        elif parts.scheme == "unix":
            db = (parse_qs(parts.query).get("db") or [""])[0]
            host, port, path = None, 0, parts.path
        else:
            return None
        if db and db != "0":
            setup.append((b"SELECT", db))
        return cls(host, port, path, setup, timeout_s)

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
                connect = loop.create_unix_connection(_Protocol, self._path)
            else:
                connect = loop.create_connection(_Protocol, self._host, self._port)
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

    async def execute(self, commands: list[Command]) -> list:
        """Replies in order; error replies come back as exception instances (not raised)."""
        conn = self._conn if self._conn is not None and not self._conn.lost else await self._connection()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        conn.waiting.extend(futures)
        conn.transport.write(_pack(commands))
        timer = loop.call_later(self._timeout, conn.fail, TimeoutError(f"Redis did not answer within {self._timeout * 1000:.0f} ms"))
        try:
            return [await future for future in futures]
        finally:
            timer.cancel()

    async def aclose(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
