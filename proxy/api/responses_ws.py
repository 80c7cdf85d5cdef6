"""Responses WebSocket mode on ``GET /v1/responses``: one socket, many turns.

Each ``response.create`` becomes the HTTP request it stands for and takes the same pipeline as
``POST /v1/responses`` (``proxy.api.pipeline``: routing, limits, accounting), so a turn is routed,
rate-limited and billed like any request and may change lane between turns. The upstream's
SSE events are relayed one text frame each. The connection keeps the last few responses'
full input + output, so ``previous_response_id`` expands into a complete request that any
upstream — HTTP-only, or another lane than the last turn's — can serve. Each stream
(``stream_id``: turns of one stream run in order, streams in parallel) also holds a
``SocketPin``: when the turn lands on the upstream socket that served the previous response,
only ``previous_response_id`` and the new items go upstream.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from proxy.api.asgi import Receive, Scope, Send, header, too_large
from proxy.api.errors import ProxyError, http_error
from proxy.api.pipeline import Call, Pipeline, read_hints
from proxy.api.responses_events import failure_events, next_sequence_number, response_object, zero_usage
from proxy.api.ws_server import SEND_TEXTS
from proxy.call import ModelRequest, Outcome, UpstreamError, UpstreamResponse
from proxy.config.schema import ApiKey
from proxy.errors import Refused
from proxy.routing.attempts import Attempt
from proxy.routing.hints import Hints
from proxy.upstream.scan import StreamScanner, event_type, response_id
from proxy.upstream.ws_pool import SocketPin, SocketResponse

log = logging.getLogger("laneway")

# Client-event fields that describe the socket, not the model request.
# A response that ended in one of these can be continued (an incomplete one was cut at max_output_tokens).
_FINAL = (b"response.completed", b"response.incomplete")
_CLIENT_ONLY = frozenset({"type", "stream", "stream_id", "client_metadata", "generate", "previous_response_id"})
_HISTORY = 8  # responses per connection a turn may continue from (memory bound)
_RELAYED_ERROR_HEADERS = (b"retry-after", b"retry-after-ms", b"x-should-retry")
_CLOSE_NORMAL = 1000


@dataclass(slots=True)
class WebSocketStats:
    """Plain counters for the metrics exporter: client sockets and the turns run over them."""

    connections_total: int = 0
    connections_open: int = 0
    refused: int = 0           # upgrades answered 426 (disabled) or 401
    turns: int = 0             # response.create with generate != false that reached routing
    warmups: int = 0           # generate: false
    errors: int = 0            # error events sent
    client_drops: int = 0      # clients gone with a turn in flight
    connection_limit: int = 0  # sockets closed at max_connection_minutes


class _Context(NamedTuple):
    """A response's whole conversation: the input items it saw plus its output, and their encoded size."""

    items: list
    size: int  # bytes: what a continuation's prompt estimate adds for it, without re-encoding it


class SseFrames:
    """Splits relayed SSE bytes into each event's JSON payload: one WebSocket frame per event."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._rest + chunk if self._rest else chunk
        out = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            data = buf.find(b"data:", start, end)
            if data >= 0:
                out.append(buf[data + 5 : end].strip())
            start = end + 2
        self._rest = buf[start:]
        return out


def error_event(error: ProxyError, stream_id: str | None = None, headers: dict[str, str] | None = None) -> dict:
    """``{"type":"error","status":N,"error":{...}}`` — Codex ignores error events without ``status``.
    ``code``/``message``/``param`` are repeated at the top level for openai-python's ResponseErrorEvent."""
    payload = error.payload()
    event = {"type": "error", "status": error.status, "error": payload, "sequence_number": 0,
             "code": payload["code"], "message": payload["message"], "param": payload["param"]}
    retry = headers if headers is not None else {k.lower(): v for k, v in error.headers.items()}
    if retry:  # where openai-python's WebSocket error type reads them, and at the top level for Codex
        payload["headers"] = event["headers"] = retry
    if stream_id is not None:
        event["stream_id"] = stream_id
    return event


class ResponsesSocket:
    """ASGI handler for ``websocket`` scopes on /v1/responses; one instance per app."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.stats = WebSocketStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return  # gone before the handshake
        runtime = self.pipeline.state.runtime
        if not runtime.policy.server.websocket.enabled:
            self.stats.refused += 1
            await deny(send, ProxyError(
                426, "WebSocket mode is disabled on this proxy; send POST /v1/responses over HTTP instead.",
                code="websocket_disabled", type="invalid_request_error"))
            return
        try:
            key = runtime.auth.check(header(scope, b"authorization"))
            hints = read_hints(scope["headers"])  # x-laneway-* hints of the handshake apply to every turn
        except (ProxyError, Refused) as exc:
            self.stats.refused += 1
            await deny(send, http_error(exc) if isinstance(exc, Refused) else exc)
            return
        headers = []
        turn_state = header(scope, b"x-codex-turn-state")
        if turn_state is not None:  # Codex's sticky-routing token: echoed back as it asks
            headers.append((b"x-codex-turn-state", turn_state))
        await send({"type": "websocket.accept", "headers": headers})
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        try:
            batched = SEND_TEXTS in scope.get("extensions", {})
            await _Connection(self.pipeline, self.stats, key, hints, receive, send, batched).run()
        finally:
            self.stats.connections_open -= 1


async def deny(send: Send, error: ProxyError) -> None:
    """Refuse the upgrade with a plain HTTP response (ASGI websocket.http.response extension)."""
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": error.body()})


class _Connection:
    """One accepted client socket: reads events, runs turns per stream (FIFO), keeps history."""

    def __init__(self, pipeline: Pipeline, stats: WebSocketStats, key: ApiKey, hints: Hints,
                 receive: Receive, send: Send, batched: bool) -> None:
        self.pipeline = pipeline
        self.stats = stats
        self.key = key
        self.hints = hints  # x-laneway-* routing hints from the handshake apply to every turn
        self.receive = receive
        self.send = send
        self.batched = batched  # the server takes several frames in one message (proxy.api.ws_server)
        self.history: OrderedDict[str, _Context] = OrderedDict()
        self.streams: dict[str | None, deque[tuple[dict, int]]] = {}  # (event, its frame size) per stream
        self.tasks: dict[str | None, asyncio.Task] = {}
        self.pins: dict[str | None, SocketPin] = {}  # per stream: the upstream socket its conversation holds
        self.last_active = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.pipeline.state.runtime.policy.server.websocket
        deadline = loop.time() + settings.max_connection_minutes * 60
        idle_s = settings.idle_timeout_s
        self.last_active = loop.time()
        try:
            while True:
                now = loop.time()
                # busy: look again after idle_s (the idle clock starts when the last turn ends)
                wait = min(deadline, (now if self.tasks else self.last_active) + idle_s) - now
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
                        message = await self.receive()
                except TimeoutError:
                    now = loop.time()
                    if now >= deadline:
                        await self._connection_limit()
                        return
                    if not self.tasks and now - self.last_active >= idle_s:
                        await self.send({"type": "websocket.close", "code": _CLOSE_NORMAL, "reason": "idle timeout"})
                        return
                    continue
                if message["type"] == "websocket.disconnect":
                    return
                self.last_active = loop.time()
                data = message.get("text")
                await self._on_event(data if data is not None else message.get("bytes") or b"")
        finally:
            await self._cancel_turns()
            for pin in self.pins.values():
                pin.drop(reusable=True)

    async def _on_event(self, data: str | bytes) -> None:
        limit = self.pipeline.state.runtime.policy.server.max_body_bytes
        size = len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode())
        if size > limit:  # a turn is a request body like any other
            await self._error(too_large(limit), None)
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            await self._error(ProxyError(400, f"Each WebSocket message must be one JSON event: {exc}.", code="invalid_json"))
            return
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "response.create":
            stream_id = event.get("stream_id")
            if stream_id is not None and not isinstance(stream_id, str):
                await self._error(ProxyError(400, "'stream_id' must be a string.", code="invalid_stream_id", param="stream_id"))
                return
            self._enqueue(stream_id, event, len(data))
        elif kind == "response.processed":
            return  # an acknowledgement some Codex builds send; nothing to do
        else:
            await self._error(ProxyError(
                400, f"Unsupported event type {str(kind)[:64]!r}; send 'response.create'.", code="unsupported_event", param="type"))

    def _enqueue(self, stream_id: str | None, event: dict, size: int) -> None:
        """One response in flight per stream; later events of the same stream wait their turn."""
        queue = self.streams.get(stream_id)
        if queue is not None:
            queue.append((event, size))
            return
        queue = self.streams[stream_id] = deque([(event, size)])
        self.tasks[stream_id] = asyncio.get_running_loop().create_task(self._drain(stream_id, queue))

    async def _drain(self, stream_id: str | None, queue: deque[tuple[dict, int]]) -> None:
        try:
            while queue:
                try:
                    await self._turn(*queue[0], stream_id)
                except OSError:
                    return  # the client is gone; the reader sees the disconnect and cleans up
                except Exception:
                    log.exception("WebSocket turn failed on stream %r", stream_id)
                    await self._error(ProxyError(500, "Laneway failed on this turn; retry it.", code="internal_error"), stream_id)
                queue.popleft()
        finally:
            self.streams.pop(stream_id, None)
            self.tasks.pop(stream_id, None)
            self.last_active = asyncio.get_running_loop().time()

    async def _cancel_turns(self) -> None:
        """The client is gone (or the socket is closing): stop every turn, which aborts its upstream."""
        tasks = list(self.tasks.values())
        if not tasks:
            return
        self.stats.client_drops += 1
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection_limit(self) -> None:
        """The connection cap: finish what is in flight, then tell the client to reconnect."""
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.stats.connection_limit += 1
        await self._error(ProxyError(
            400, "This WebSocket reached its maximum lifetime (server.websocket.max_connection_minutes); "
            "open a new connection to continue.", code="websocket_connection_limit_reached"))
        await self.send({"type": "websocket.close", "code": _CLOSE_NORMAL, "reason": "connection limit reached"})

    # --- one turn --------------------------------------------------------------------------

    async def _turn(self, event: dict, frame_size: int, stream_id: str | None) -> None:
        pipeline = self.pipeline
        call = pipeline.call("responses", "req_" + os.urandom(12).hex(), self.key, self.hints, "websocket")
        try:
            body, context, delta, prior_size = self._expand(event)
            if event.get("generate") is False:
                call.runtime.router.resolve(body["model"])
                await self._warm_up(body, context, stream_id)
                return
            self.stats.turns += 1
            # encoded only if it lands where the whole context must go (HTTP, a fresh socket)
            req = pipeline.request(call, body, None, frame_size + prior_size)
            pin = self.pins.get(stream_id)
            if pin is None:
                pin = self.pins[stream_id] = SocketPin()
            pin.previous, pin.delta = event.get("previous_response_id"), delta
            call.pin = pin  # an upstream socket target continues the turn on it when it can
            attempt = await pipeline.run(call)
        except (ProxyError, Refused) as exc:
            error = http_error(exc) if isinstance(exc, Refused) else exc
            pipeline.refused(call, error)
            await self._error(error, stream_id)
            return
        try:
            if attempt.response.status == 200:
                await self._relay(call, attempt, req, context, stream_id)
            else:
                await self._relay_error(attempt, call.outcome, stream_id)
        finally:
            pipeline.finish(call)

    def _expand(self, event: dict) -> tuple[dict, _Context, list, int]:
        """The HTTP body this event stands for, with ``previous_response_id`` expanded into the
        full input; the conversation so far including the event's items; the event's own items;
        the encoded size of the earlier conversation the body now carries."""
        body = {k: v for k, v in event.items() if k not in _CLIENT_ONLY}
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ProxyError(400, "'model' is required: a route name or a model listed by GET /v1/models.",
                             code="missing_model", param="model")
        delta = _as_items(body.get("input"))
        past = _NO_CONTEXT
        previous = event.get("previous_response_id")
        if previous is not None:
            past = self.history.get(previous) if isinstance(previous, str) else None
            if past is None:
                raise ProxyError(
                    400, f"Previous response {str(previous)[:100]!r} is not known on this connection "
                    "(only its last responses are kept). Send the full conversation as input, without "
                    "previous_response_id.", code="previous_response_not_found", param="previous_response_id")
        items = past.items + delta if past.items else delta
        if previous is not None:
            body["input"] = items
        body["stream"] = True
        context = _Context(items, past.size + (len(orjson.dumps(delta)) if delta else 0))
        return body, context, delta, past.size

    async def _warm_up(self, body: dict, context: _Context, stream_id: str | None) -> None:
        """``generate: false``: a response id to chain from, no model output, no upstream call."""
        self.stats.warmups += 1
        rid = "resp_" + os.urandom(16).hex()
        self._remember(rid, context)
        response = response_object(body, rid, "in_progress")
        extra = {} if stream_id is None else {"stream_id": stream_id}
        await self._send_event({"type": "response.created", "sequence_number": 0, "response": response, **extra})
        done = {**response, "status": "completed", "usage": zero_usage()}
        await self._send_event({"type": "response.completed", "sequence_number": 1, "response": done, **extra})

    async def _relay(self, call: Call, attempt: Attempt, req: ModelRequest, context: _Context,
                     stream_id: str | None) -> None:
        outcome, response = call.outcome, attempt.response
        dep = attempt.deployment
        extra = {} if stream_id is None else {"stream_id": stream_id}
        await self._send_event({"type": "laneway.route", "route": outcome.route, "deployment": dep.name,
                                "lane": dep.hardware, "reason": attempt.reason, **extra})
        scanner = StreamScanner(outcome.started)
        stats = call.runtime.router.live.stats
        stats.awaiting(dep.name, scanner, req.input_estimate)  # its wait tells routing how slow the lane is now
        prefix = b'{"stream_id":' + orjson.dumps(stream_id) + b"," if stream_id is not None else None
        completed: bytes | None = None
        first, last = b"", []  # enough of the turn to end it well-formed if the upstream breaks off
        try:
            async for texts in _event_batches(response, scanner):
                first, last = first or texts[0], texts
                if completed is None:
                    completed = next((data for data in texts if event_type(data) in _FINAL), None)
                if prefix is not None:
                    texts = [prefix + data[1:] for data in texts]
                await self._send_texts(texts)
        except UpstreamError as exc:
            outcome.status, outcome.error_code = 502, "upstream_stream_error"
            message = f"The upstream stream broke off ({exc.kind}); the response is incomplete. Retry the turn."
            error, failed = failure_events(req.body, response_id(first), next_sequence_number(*last),
                                           "upstream_stream_error", message)
            event = error_event(ProxyError(502, message, code="upstream_stream_error"), stream_id)
            event["sequence_number"] = error["sequence_number"]  # the turn's numbering goes on
            self.stats.errors += 1
            await self._send_texts([orjson.dumps(event), orjson.dumps({**failed, **extra})])
        except (asyncio.CancelledError, OSError):
            outcome.status, outcome.error_code = 499, "client_disconnected"
            scanner.feed(response.abandon())  # count what arrived but was not relayed
            raise
        finally:
            response.release()  # aborts the upstream exchange unless it finished cleanly
            stats.answered(dep.name, scanner)
            outcome.first_token_at = scanner.first_token_at
            outcome.take_usage(scanner.usage_or_estimate(req.input_estimate))
        if completed is not None:
            done = orjson.loads(completed).get("response") or {}
            if isinstance(done.get("id"), str):
                call.response_id = done["id"]
                output = list(done.get("output") or ())
                self._remember(done["id"], _Context(context.items + output, context.size + len(orjson.dumps(output))))

    async def _relay_error(self, attempt: Attempt, outcome: Outcome, stream_id: str | None) -> None:
        """An upstream refusal (after routing ran out of candidates) as an error event with its status."""
        response = attempt.response
        outcome.error_code = "upstream_status"
        try:
            raw = await response.read()
        except UpstreamError as exc:
            raw = b""
            log.warning("upstream error body for %s broke off (%s)", outcome.request_id, exc.kind)
        finally:
            response.release()
        try:
            detail = orjson.loads(raw).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            detail = None
        detail = detail if isinstance(detail, dict) else {}
        error = ProxyError(response.status, str(detail.get("message") or f"The upstream answered {response.status}."),
                           code=detail.get("code"), type=detail.get("type"), param=detail.get("param"))
        relayed = {name.decode(): value.decode("latin-1") for name, value in response.headers if name in _RELAYED_ERROR_HEADERS}
        await self._error(error, stream_id, relayed)

    # --- plumbing -------------------------------------------------------------------------

    def _remember(self, response_id: str, context: _Context) -> None:
        self.history[response_id] = context
        while len(self.history) > _HISTORY:
            self.history.popitem(last=False)

    async def _send_texts(self, texts: list[bytes]) -> None:
        """Text frames, one per event: in one message where the server allows, else one each."""
        if self.batched:
            await self.send({"type": SEND_TEXTS, "texts": texts})
            return
        for text in texts:
            await self.send({"type": "websocket.send", "text": text.decode()})

    async def _send_event(self, event: dict) -> None:
        await self._send_texts([orjson.dumps(event)])

    async def _error(self, error: ProxyError, stream_id: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.stats.errors += 1
        await self._send_event(error_event(error, stream_id, headers))


_NO_CONTEXT = _Context([], 0)


async def _event_batches(response: UpstreamResponse, scanner: StreamScanner) -> AsyncIterator[list[bytes]]:
    """The events of each upstream chunk, scanned on the way: as an upstream socket hands them over,
    else split out of the relayed SSE."""
    if isinstance(response, SocketResponse):
        async for texts in response.iter_events():
            scanner.feed(b"\n".join(texts))
            yield texts
        return
    frames = SseFrames()
    async for chunk in response.iter_body():
        scanner.feed(chunk)
        texts = frames.feed(chunk)
        if texts:
            yield texts


def _as_items(value: object) -> list:
    """Responses ``input`` as a list of items (a bare string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return value
    raise ProxyError(400, "'input' must be a string or a list of input items.", code="invalid_input", param="input")
