"""Persistent upstream sockets for providers that speak Responses WebSocket mode.

A deployment with ``websocket: true`` runs its Responses turns — including plain HTTP
``POST /v1/responses`` — over a small pool of long-lived sockets, which saves the
per-request connection and header work the providers measure. The pool is bounded by the
provider's connection cap; a failed connect backs off exponentially. Whenever no socket can
take a turn (cap reached, backing off, the socket died before the first event), the turn
goes over keep-alive HTTP instead, so it is never lost.

A client WebSocket conversation holds one upstream socket (a ``SocketPin``) while it is
healthy: the provider keeps the last response of a connection in memory, so a turn that
continues the pinned socket's last response is forwarded as ``previous_response_id`` plus
only the new input items. An HTTP client resends its whole conversation each turn; the pool
remembers (as digests, ``proxy.upstream.ws_memory``) what each idle socket's provider holds,
and a request whose input is a socket's last turn plus new items takes that socket and sends
only those. Anything else — the socket gone, another deployment served the last turn, other
parameters, the provider refusing the continuation — sends the full context.

The target keeps the HTTP relay's interface: ``send(req)`` returns a response whose
``iter_body()`` yields SSE bytes (each frame re-wrapped as ``event:``/``data:``).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from proxy.call import (
    ModelRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.config.schema import Deployment
from proxy.upstream.body import rewrite_body
from proxy.upstream.openai_compat import OpenAICompatTarget
from proxy.upstream.scan import event_type, response_id
from proxy.upstream.tls import client_context
from proxy.upstream.ws_memory import Conversation, Memory, conversation
from proxy.upstream.ws_protocol import UpstreamSocket, connect

log = logging.getLogger("laneway")

BETA_HEADER = "responses_websockets=2026-02-06"
_TERMINAL = frozenset({b"response.completed", b"response.failed", b"response.incomplete", b"error"})
# Events before any output: held back so a socket dying during prefill can still hand the turn to HTTP.
_PRELUDE = frozenset({b"response.created", b"response.queued", b"response.in_progress",
                      b"response.output_item.added", b"response.content_part.added"})
# Events whose response object names previous_response_id: a continuation the client did not ask for hides it.
_CHAINED = frozenset({b"response.created", b"response.queued", b"response.in_progress", b"response.completed",
                      b"response.failed", b"response.incomplete"})
_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 30.0
_SSE_CHUNKS, _EVENT_LISTS, _WHOLE = 0, 1, 2  # what SocketResponse._batches yields
_SSE = [(b"content-type", b"text/event-stream")]
_JSON = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class SocketStats:
    """Plain counters for the metrics exporter (one set per deployment pool)."""

    connects: int = 0
    connect_failures: int = 0
    turns: int = 0          # turns that ran over a socket
    http_fallbacks: int = 0  # turns sent over HTTP because no socket could take them
    drops: int = 0          # sockets that died under a turn
    continued: int = 0      # turns sent as previous_response_id + new items (a client socket's or an HTTP client's)
    continue_misses: int = 0  # of those, refused by the provider (400/404) and re-sent in full context


class SocketPool:
    """Idle sockets to one deployment URL with one API key, at most ``limit`` open at once."""

    def __init__(self, url: str, headers: dict[str, str], limit: int, connect_s: float, deflate: bool = False,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.headers = headers
        self.limit = limit
        self.connect_s = connect_s
        self.deflate = deflate  # offer permessage-deflate on its sockets
        self.ssl_context = ssl_context  # None: the system store
        self.idle: list[UpstreamSocket] = []
        # idle sockets whose last turn a resent conversation may continue, the longest remembered first
        self.remembered: dict[UpstreamSocket, Memory] = {}
        self.open = 0
        self.stats = SocketStats()
        self._down_until = 0.0
        self._backoff = 0.0

    async def acquire(self) -> UpstreamSocket | None:
        """An open socket for a turn that continues none: an idle one no conversation can continue,
        else a new one while under the cap, else the idle one remembered longest (its conversation's
        next turn goes in full); None when the cap is reached or the provider is backing off."""
        while (ws := self._spare(self.open < self.limit and time.monotonic() >= self._down_until)) is not None:
            if ws.open and not ws.messages:  # a message while idle answers no turn: not this socket
                return ws
            self.open -= 1
            ws.abort()
        if self.open >= self.limit or time.monotonic() < self._down_until:
            return None
        self.open += 1
        try:
            ws = await connect(self.url, self.headers, self.connect_s, deflate=self.deflate,
                               ssl_context=self.ssl_context)
        except UpstreamConnectError as exc:
            self.open -= 1
            self.stats.connect_failures += 1
            self._backoff = min(max(_BACKOFF_MIN_S, self._backoff * 2), _BACKOFF_MAX_S)
            self._down_until = time.monotonic() + self._backoff
            log.warning("upstream WebSocket %s unavailable (%s); HTTP for %.1fs", self.url.split("?")[0],
                        exc, self._backoff)
            return await self.acquire() if self.idle else None  # backing off now: a remembered idle socket
        except BaseException:
            self.open -= 1
            raise
        self._backoff = 0.0
        self.stats.connects += 1
        return ws

    def claim(self, convo: Conversation) -> tuple[UpstreamSocket, Memory] | None:
        """The idle socket whose last turn ``convo`` continues (the longest such), taken out of the
        pool. Synchronous: two requests of one conversation cannot both take it."""
        if not self.remembered:
            return None
        prefixes = convo.prefixes(memory.count for memory in self.remembered.values())
        best = None
        for ws, memory in self.remembered.items():
            if prefixes.get(memory.count) == memory.digest and ws.open and not ws.messages:
                if best is None or memory.count > best[1].count:
                    best = ws, memory
        if best is not None:
            del self.remembered[best[0]]
            self.idle.remove(best[0])
        return best

    def release(self, ws: UpstreamSocket, reusable: bool, memory: Memory | None = None) -> None:
        """Back to the idle sockets (with what its provider now remembers, if a conversation may
        continue it), or closed."""
        if reusable and ws.open and not ws.messages:
            self.idle.append(ws)
            if memory is not None:
                self.remembered[ws] = memory
            return
        self.open -= 1
        ws.abort()

    def _spare(self, may_open: bool) -> UpstreamSocket | None:
        """An idle socket taken out of the pool for a fresh turn: the most recent one nothing is
        remembered of; a remembered one only when no new socket ``may_open``."""
        idle, remembered = self.idle, self.remembered
        for i in range(len(idle) - 1, -1, -1):
            if idle[i] not in remembered:
                return idle.pop(i)
        if not idle or may_open:
            return None
        ws = next(iter(remembered))
        del remembered[ws]
        idle.remove(ws)
        return ws

    def close(self) -> None:
        for ws in self.idle:
            ws.close()
        self.idle.clear()
        self.remembered.clear()
        self.open = 0


class SocketPin:
    """The upstream socket one client conversation (one lane of a client socket) holds between turns.

    The API layer sets ``previous`` (the client's previous_response_id) and ``delta`` (the turn's
    new input items) before routing; ``response_id`` is the last response completed on ``ws``.
    """

    __slots__ = ("pool", "ws", "response_id", "previous", "delta", "busy")

    def __init__(self) -> None:
        self.pool: SocketPool | None = None
        self.ws: UpstreamSocket | None = None
        self.response_id: str | None = None
        self.previous: str | None = None
        self.delta: list | None = None
        self.busy = False

    def take(self, pool: SocketPool) -> UpstreamSocket | None:
        """The pinned socket if it is open and belongs to ``pool``; a socket of another pool goes back to it."""
        ws = self.ws
        if ws is None:
            return None
        if self.pool is pool and ws.open:
            return ws
        self.drop(reusable=True)
        return None

    def keep(self, pool: SocketPool, ws: UpstreamSocket, response_id: str | None) -> None:
        if self.ws is not None and self.ws is not ws:  # a hedged twin pinned one first: one socket is enough
            self.drop(reusable=True)
        self.pool, self.ws, self.response_id = pool, ws, response_id

    def drop(self, reusable: bool) -> None:
        """Unpin: the socket returns to its pool (or closes) and the provider's memory of it is forgotten."""
        if self.ws is not None and self.pool is not None:
            self.pool.release(self.ws, reusable)
        self.pool = self.ws = self.response_id = None


class SocketPools:
    """One SocketPool per (deployment URL, API key, extra headers, compression, trust): its sockets all
    negotiated alike; shared across policy reloads like the HTTP pools."""

    def __init__(self) -> None:
        self.pools: dict[tuple, SocketPool] = {}

    def get(self, deployment: Deployment) -> SocketPool:
        url = "ws" + deployment.base_url[4:] + "/responses"  # http(s):// -> ws(s)://
        deflate = deployment.websocket_compression == "deflate"
        ctx = client_context(deployment.ca_file) if deployment.ca_file and url.startswith("wss:") else None
        key = (url, deployment.api_key, tuple(sorted(deployment.headers.items())), deflate, ctx)
        pool = self.pools.get(key)
        if pool is None:
            headers = {"OpenAI-Beta": BETA_HEADER, **deployment.headers}
            if deployment.api_key:
                headers["Authorization"] = "Bearer " + deployment.api_key
            pool = self.pools[key] = SocketPool(url, headers, deployment.websocket_max_connections,
                                                deployment.timeouts.connect_s, deflate, ctx)
        else:  # a reloaded policy may change the cap; open sockets stay until they are released
            pool.limit, pool.connect_s = deployment.websocket_max_connections, deployment.timeouts.connect_s
        return pool

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


class SocketResponse:
    """A turn running on a pooled socket, presented like an HTTP response carrying SSE."""

    __slots__ = ("status", "headers", "_pool", "_ws", "_held", "_stream", "_idle_s", "_done", "_released", "_pin",
                 "_completed", "_watchdog", "_convo", "_unchain", "_final")

    def __init__(self, pool: SocketPool, ws: UpstreamSocket, held: list[bytes], stream: bool, idle_s: float,
                 pin: SocketPin | None = None, convo: Conversation | None = None, unchain: str | None = None) -> None:
        self.status = 200
        self.headers = _SSE if stream else _JSON
        self._pool = pool
        self._ws = ws
        self._unchain = unchain  # the previous_response_id Laneway added, hidden from the client
        if unchain is not None:
            held = [_unchained(data, unchain) for data in held]
        self._held = held  # events received before the first output: response_id() reads the first
        ws.messages.extendleft(reversed(held))  # relayed with what arrived behind them, in one chunk
        self._stream = stream
        self._idle_s = idle_s
        self._done = False
        self._released = False
        self._pin = pin  # a client conversation keeps the socket after the turn
        self._completed = False
        self._watchdog: _IdleWatchdog | None = None
        self._convo = convo  # the request's digests: what the socket's provider remembers after the turn
        self._final: bytes | None = None  # response.completed, read for that

    def iter_body(self) -> AsyncIterator[bytes]:
        """SSE; the events that arrived in one read as one chunk (one write to the client). Not
        streaming: the response object, once the turn is over."""
        return self._batches(_SSE_CHUNKS if self._stream else _WHOLE)

    def iter_events(self) -> AsyncIterator[list[bytes]]:
        """The events' JSON payloads, those of one read in one list: for a client socket, which sends
        each event as its own frame and would otherwise split the SSE up again."""
        return self._batches(_EVENT_LISTS)

    async def _batches(self, shape: int) -> AsyncIterator:
        """Each read's events up to the turn's terminal one, in the ``shape`` the reader wants."""
        ws = self._ws
        messages = ws.messages
        sse = shape == _SSE_CHUNKS
        watchdog = self._watchdog = _IdleWatchdog(ws, self._idle_s)
        try:
            while True:
                if not messages:
                    try:
                        await ws.readable()
                    except UpstreamError as exc:
                        self._pool.stats.drops += not isinstance(exc, UpstreamTimeout)  # a timeout is the watchdog's
                        raise
                    watchdog.last = watchdog.loop.time()
                out: list[bytes] = []  # SSE pieces joined once per read, or the payloads themselves
                while messages:
                    data = messages.popleft()
                    kind = event_type(data)
                    terminal = kind in _TERMINAL
                    if terminal and self._unchain is not None:
                        data = _unchained(data, self._unchain)
                    if sse:
                        out += (b"event: ", kind, b"\ndata: ", data, b"\n\n")
                    elif shape == _EVENT_LISTS:
                        out.append(data)
                    if terminal:
                        self._done = True
                        self._completed = kind == b"response.completed"
                        if self._completed and self._convo is not None:
                            self._final = data
                        if shape == _WHOLE:
                            yield orjson.dumps(orjson.loads(data).get("response") or {})
                        else:
                            yield b"".join(out) if sse else out
                        return
                if shape != _WHOLE:
                    yield b"".join(out) if sse else out
        finally:
            watchdog.cancel()
            self.release()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_body()])

    def abandon(self) -> bytes:
        """Close the socket (the provider stops generating) and return, as SSE, the events that had
        arrived but were not relayed (the provider sent, and bills, those tokens too)."""
        rest = b""
        if not self._released and self._stream:
            rest = b"".join(_sse(event_type(data), data) for data in self._ws.messages)
        self.release()
        return rest

    def release(self) -> None:
        """Back to the pool after a whole turn; a turn cut short closes the socket (cancels upstream)."""
        if not self._released:
            self._released = True
            if self._watchdog is not None:
                self._watchdog.cancel()
            pin = self._pin
            if pin is None:
                self._pool.release(self._ws, self._done, self._memory())
                return
            pin.busy = False
            if self._done and self._ws.open:
                pin.keep(self._pool, self._ws, response_id(self._held[0]) if self._completed else None)
            else:
                self._pool.release(self._ws, False)

    def _memory(self) -> Memory | None:
        """What the provider remembers of the completed turn, for the next request to continue."""
        if self._final is None or self._convo is None:
            return None
        try:
            event = orjson.loads(self._final)
        except orjson.JSONDecodeError:
            return None
        response = event.get("response") if isinstance(event, dict) else None
        rid, output = (response.get("id"), response.get("output")) if isinstance(response, dict) else (None, None)
        if not isinstance(rid, str) or not isinstance(output, list):
            return None
        return self._convo.memory(rid, output)


def _unchained(data: bytes, previous: str) -> bytes:
    """An event of a turn Laneway continued, as the full send the client made would have answered it:
    its response object's ``previous_response_id`` null. A JSON string cannot hold the bare pattern
    (its quotes are escaped), so the byte replacement touches only the member; an event spelled
    otherwise is re-encoded."""
    member = b'"previous_response_id":' + orjson.dumps(previous)
    if member in data and event_type(data) in _CHAINED:
        return data.replace(member, b'"previous_response_id":null', 1)
    if previous.encode() not in data:
        return data
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    response = event.get("response") if isinstance(event, dict) else None
    if isinstance(response, dict) and response.get("previous_response_id") == previous \
            and str(event.get("type")).encode() in _CHAINED:
        response["previous_response_id"] = None
        return orjson.dumps(event)
    return data


def _in_prelude(data: bytes) -> bool:
    return event_type(data) in _PRELUDE


async def _until_output(ws: UpstreamSocket) -> list[bytes]:
    """The turn's events up to and including the first one past the prelude."""
    await ws.readable()
    held = []
    while True:
        data = ws.messages.popleft()
        held.append(data)
        if not _in_prelude(data):
            return held


def _refused(data: bytes) -> bool:
    """An ``error`` event refusing the request itself (400/404), which a full send may not get."""
    if event_type(data) != b"error":
        return False
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(event, dict) and event.get("status") in (400, 404)


def _first_byte_timeout(ws: UpstreamSocket, first_byte_s: float) -> None:
    ws.fail(UpstreamTimeout(f"upstream socket sent no event within {first_byte_s:.1f}s"))


def _sse(kind: bytes, data: bytes) -> bytes:
    """One socket event as the SSE frame the HTTP relay expects."""
    return b"event: " + kind + b"\ndata: " + data + b"\n\n"


class _IdleWatchdog:
    """Fails a socket that sent nothing for ``idle_s``: one timer per turn that re-arms itself
    from the last event's time, instead of a timer around every wait."""

    __slots__ = ("loop", "last", "_ws", "_idle_s", "_handle")

    def __init__(self, ws: UpstreamSocket, idle_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self._ws = ws
        self._idle_s = idle_s
        self._handle = self.loop.call_at(self.last + idle_s, self._check)

    def _check(self) -> None:
        due = self.last + self._idle_s
        if self.loop.time() < due:
            self._handle = self.loop.call_at(due, self._check)
            return
        self._ws.fail(UpstreamTimeout("upstream socket sent nothing for %.1fs" % self._idle_s))

    def cancel(self) -> None:
        self._handle.cancel()


class ErrorResponse:
    """An upstream ``error`` event before any output, shaped like an HTTP error response so the
    router can fall back on 429/5xx exactly as it does for HTTP."""

    __slots__ = ("status", "headers", "_body")

    def __init__(self, event: dict) -> None:
        self.status = int(event.get("status") or 500)
        extra = event.get("headers") if isinstance(event.get("headers"), dict) else {}
        self.headers = _JSON + [(str(k).lower().encode(), str(v).encode()) for k, v in extra.items()]
        self._body = orjson.dumps({"error": event.get("error") or {"message": "upstream error", "type": "server_error",
                                                                      "param": None, "code": None}})

    async def iter_body(self) -> AsyncIterator[bytes]:
        yield self._body

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        return None

    def abandon(self) -> bytes:
        return b""


class SocketTarget:
    """Responses turns over pooled upstream sockets; everything else (and every fallback) over HTTP."""

    def __init__(self, deployment: Deployment, http: OpenAICompatTarget, pool: SocketPool) -> None:
        self.deployment = deployment
        self.http = http
        self.pool = pool

    def injects_usage(self, req: ModelRequest) -> bool:
        return self.http.injects_usage(req)

    async def forward(self, method: str, path: str, request_id: str):
        return await self.http.forward(method, path, request_id)

    async def send(self, req: ModelRequest, pin: SocketPin | None = None):
        if req.endpoint != "responses":
            return await self.http.send(req)
        if pin is not None and not pin.busy:
            response = await self._send_pinned(pin, req)
            if response is not None:
                return response
        convo = conversation(req.body, self.deployment.model) if pin is None else None
        if convo is not None:
            response = await self._send_continued(convo, req)
            if response is not None:
                return response
        frame = self._frame(req)
        for _ in range(2):  # a pooled socket may have died while idle: one more try on a fresh one
            ws = await self.pool.acquire()
            if ws is None:
                break
            response = await self._start(ws, frame, req, convo=convo)
            if response is not None:
                self.pool.stats.turns += 1
                return response
        self.pool.stats.http_fallbacks += 1
        return await self.http.send(req)

    async def _send_continued(self, convo: Conversation, req: ModelRequest):
        """A resent conversation's turn on the idle socket whose last turn it continues, as
        ``previous_response_id`` + the items after that turn's; None when no socket remembers it
        or the socket died before any output (the caller sends the full context)."""
        claimed = self.pool.claim(convo)
        if claimed is None:
            return None
        ws, memory = claimed
        self.pool.stats.continued += 1
        frame = self._continuation(req, memory.response_id, convo.items[memory.count:])
        response = await self._start(ws, frame, req, continued=memory.response_id, convo=convo)
        if response is not None:
            self.pool.stats.turns += 1
        return response

    async def _send_pinned(self, pin: SocketPin, req: ModelRequest):
        """A client conversation's turn on its own socket: continued when the socket served the
        previous response, else in full; None when no socket can take it (the caller falls back)."""
        pin.busy = True  # until the turn's SocketResponse is released
        response = None
        try:
            ws = pin.take(self.pool)
            continued = ws is not None and pin.previous is not None and pin.previous == pin.response_id
            if ws is None:
                ws = await self.pool.acquire()
                if ws is None:
                    return None
            pin.ws = pin.response_id = None  # held by this turn; SocketResponse pins it again after a clean turn
            self.pool.stats.continued += continued
            frame = self._continuation(req, pin.previous, pin.delta or []) if continued else self._frame(req)
            response = await self._start(ws, frame, req, pin, pin.previous if continued else None)
        finally:
            if not isinstance(response, SocketResponse):
                pin.busy = False
        if response is None:  # the socket died before any output: the fresh-socket/HTTP path takes the turn
            return None
        self.pool.stats.turns += 1
        return response

    def _continuation(self, req: ModelRequest, previous: str, items: list) -> bytes:
        """``response.create`` naming the previous response and carrying only the new input items."""
        body = dict(req.body, input=items, previous_response_id=previous)
        body.pop("stream", None)
        return b'{"type":"response.create",' + rewrite_body(None, body, self.deployment.model, False)[1:]

    def _frame(self, req: ModelRequest) -> bytes:
        """``response.create`` with the body's fields flat beside ``type`` (a byte splice of the
        client's bytes when there are any)."""
        body, raw = req.body, req.raw
        if "stream" in body and body["stream"] is not True:
            body, raw = {k: v for k, v in body.items() if k != "stream"}, None
        raw = rewrite_body(raw, body, self.deployment.model, False).lstrip()
        return b"".join((b'{"type":"response.create",', memoryview(raw)[1:]))  # one copy of a large body

    async def _start(self, ws: UpstreamSocket, frame: bytes, req: ModelRequest, pin: SocketPin | None = None,
                     continued: str | None = None, convo: Conversation | None = None):
        """Send the turn and hold its events until the first output (or the end); None when the
        socket died before then — nothing has reached the client, so HTTP can still take the turn.
        ``continued``: the previous response ``frame`` names; if the provider refuses that (it no
        longer knows the response, or anything else a 400/404 says) ``req`` is re-sent once with its
        whole context. ``convo``: an HTTP client's digests, remembered with the socket after the turn."""
        t = self.deployment.timeouts
        # past first_byte_s the socket fails with the timeout: a timer, cheaper than a timeout scope
        deadline = asyncio.get_running_loop().call_later(t.first_byte_s, _first_byte_timeout, ws, t.first_byte_s)
        ws.hold = _in_prelude  # one wake-up at the first event past the prelude, not one per event before it
        try:
            ws.send_text(frame)
            held = await _until_output(ws)
            if continued is not None and _refused(held[0]):
                self.pool.stats.continue_misses += 1
                continued = None
                ws.send_text(self._frame(req))
                held = await _until_output(ws)
        except UpstreamTimeout:
            self.pool.release(ws, False)
            raise
        except UpstreamError:  # closed, or broke the protocol: nothing reached the client yet
            self.pool.stats.drops += 1
            self.pool.release(ws, False)
            return None
        except BaseException:
            self.pool.release(ws, False)
            raise
        finally:
            deadline.cancel()
            ws.hold = None
        if len(held) == 1 and event_type(held[0]) == b"error":
            if pin is not None:
                pin.keep(self.pool, ws, None)  # still the conversation's socket; the provider remembers nothing new
            else:
                self.pool.release(ws, True)
            try:
                return ErrorResponse(orjson.loads(held[0]))
            except orjson.JSONDecodeError:
                return ErrorResponse({})
        # a client socket named the previous response itself; an HTTP client's answer must not show it
        unchain = continued if pin is None else None
        return SocketResponse(self.pool, ws, held, req.stream, t.idle_s, pin, convo, unchain)
