"""OpenAI-compatible model endpoints over HTTP: parse a little, route, relay bytes.

The request body is parsed once (orjson) for the fields routing needs and forwarded as
received; the response is relayed chunk by chunk as the upstream sends it, scanned for
the first token and the usage object on the way.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson

from proxy.api.asgi import (
    Receive,
    Scope,
    Send,
    header,
    read_body,
    request_id,
    send_bytes,
    send_error,
)
from proxy.api.errors import ProxyError, http_error
from proxy.api.http_server import CLIENT_STREAM, ClientStream
from proxy.api.pipeline import Call, Pipeline, read_hints
from proxy.api.responses_events import (
    failure_events,
    next_sequence_number,
    sse,
)
from proxy.call import ModelRequest, Outcome, UpstreamError, Usage
from proxy.errors import Refused
from proxy.routing.attempts import Attempt
from proxy.upstream.http_pool import Response as PooledResponse
from proxy.upstream.scan import StreamScanner, UsageChunkFilter, extract_usage, response_id

log = logging.getLogger("laneway")

# Upstream response headers a client may rely on, as the provider sent them.
_RELAYED = frozenset({b"retry-after", b"retry-after-ms", b"x-should-retry", b"openai-processing-ms"})
_RATE_LIMIT = b"x-ratelimit-"


class ModelEndpoint:
    """ASGI handler for one of /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings:
    the HTTP transport of the pipeline."""

    def __init__(self, pipeline: Pipeline, endpoint: str) -> None:
        self.pipeline = pipeline
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pipeline = self.pipeline
        call = pipeline.call(self.endpoint, request_id(scope))
        rid = call.outcome.request_id
        watch: _ClientWatch | None = None
        try:
            runtime = call.runtime
            pipeline.authenticated(call, runtime.auth.check(header(scope, b"authorization")))
            call.hints = read_hints(scope["headers"])
            raw = await read_body(receive, scope, runtime.policy.server.max_body_bytes)
            req = pipeline.request(call, self._decode(raw), raw)
            watch = _ClientWatch(receive)  # from here a hang-up cancels the call: routing, the wait, the relay
            attempt = await pipeline.run(call)
        except (ProxyError, Refused) as exc:
            if watch is not None:
                watch.stop()
            error = http_error(exc) if isinstance(exc, Refused) else exc
            pipeline.refused(call, error)
            await send_error(send, error, rid)
            return
        except asyncio.CancelledError:
            if watch is None or not watch.gone:
                raise
            watch.uncancel()  # gone while the upstream was working (a whole body is generated before its headers)
            _hung_up(call.outcome, Usage(input_tokens=req.input_estimate, reported=False))
            pipeline.finish(call)
            return
        own = call.rate_limit_headers()
        headers = _response_headers(attempt, rid, relay_rate_limits=not own) + own
        try:
            if req.stream and attempt.response.status == 200:
                await _relay_stream(call, attempt, req, headers, watch, send, _client_stream(scope))
            else:
                await _relay_whole(call, attempt, req, headers, watch, send)
        finally:
            watch.stop()
            pipeline.finish(call)

    @staticmethod
    def _decode(raw: bytes) -> dict:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProxyError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ProxyError(400, "The request body must be a JSON object.", code="invalid_json")
        return body


# A call still running after this long gets a task listening for the client's hang-up; quicker
# ones (most non-streamed answers) finish without one. A hang-up in the meantime is not lost: the
# server remembers it, and the listener's first receive() reports it at once.
WATCH_AFTER_S = 0.05


class _ClientWatch:
    """Cancels the relaying task when the client disconnects, so the upstream exchange is aborted
    (the provider stops generating) and the call's slot is freed; ``gone`` tells the relay why."""

    __slots__ = ("_done", "_receive", "_relay", "_timer", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        """Call it once the request body has been read: what ``receive`` says next is the disconnect."""
        self.gone = False
        self._done = False
        self._receive = receive
        relay = self._relay = asyncio.current_task()
        self._watcher: asyncio.Future | None = None
        # the task's loop: asking for the running loop again would cost another getpid() syscall
        self._timer: asyncio.TimerHandle | None = relay.get_loop().call_later(WATCH_AFTER_S, self._listen)

    def _listen(self) -> None:
        self._timer = None
        if not self._done:
            self._watcher = asyncio.ensure_future(self._receive())
            self._watcher.add_done_callback(self._on_message)

    def _on_message(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None or self._done:
            return
        if fut.result().get("type") == "http.disconnect":
            self.gone = True
            self._relay.cancel()

    def stop(self) -> None:
        """The response is complete (or failed): a disconnect from now on changes nothing."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()

    def uncancel(self) -> None:
        self._relay.uncancel()


async def _relay_whole(call: Call, attempt: Attempt, req: ModelRequest, headers: list, watch: _ClientWatch,
                       send: Send) -> None:
    outcome, response = call.outcome, attempt.response
    try:
        body = await response.read()
    except UpstreamError as exc:
        watch.stop()
        error = ProxyError(502, f"The upstream broke off its response ({exc.kind}). Retry the request.", code="upstream_error")
        outcome.status, outcome.error_code = error.status, error.code
        await send_error(send, error, req.request_id)
        return
    except asyncio.CancelledError:
        if not watch.gone:
            raise
        watch.uncancel()
        rest = response.abandon()  # a whole body that had partly arrived may say its usage
        _hung_up(outcome, extract_usage(rest) or Usage(input_tokens=req.input_estimate, reported=False))
        return
    finally:
        watch.stop()
    if response.status == 200:
        outcome.take_usage(extract_usage(body) or Usage(input_tokens=req.input_estimate, reported=False))
        if req.endpoint == "responses":
            call.response_id = response_id(body)
    await send_bytes(send, response.status, body, headers, content_type=_content_type(attempt))


async def _relay_stream(call: Call, attempt: Attempt, req: ModelRequest, headers: list, watch: _ClientWatch,
                        send: Send, client: ClientStream | None) -> None:
    outcome, response = call.outcome, attempt.response
    scanner = StreamScanner(outcome.started)
    stats, lane = call.runtime.router.live.stats, attempt.deployment.name
    stats.awaiting(lane, scanner, req.input_estimate)  # its wait tells routing how slow the lane is now
    usage_filter = UsageChunkFilter() if attempt.injected_usage else None
    edges = _StreamEdges()
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", _content_type(attempt)), *headers]})
        out = client if client is not None and client.ready() else _AsgiStream(send)
        sink = _sink(scanner, usage_filter, edges, out.write)
        if isinstance(response, PooledResponse):  # chunks written from the upstream's read callback
            await response.relay(sink, out.drain, call.runtime.policy.server.stream_batch_ms / 1000)
        else:  # LiteLLM, upstream sockets, a hedge's replay
            async for chunk in response.iter_body():
                if not sink(chunk):
                    await out.drain()
        tail = usage_filter.flush() if usage_filter else b""
        watch.stop()
        if req.endpoint == "responses":
            call.response_id = response_id(edges.first)
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    except asyncio.CancelledError:
        if not watch.gone:
            raise
        watch.uncancel()
        outcome.status, outcome.error_code = 499, "client_disconnected"
        scanner.feed(response.abandon())  # count what already arrived (usage taken below)
    except UpstreamError as exc:
        watch.stop()
        outcome.status, outcome.error_code = 502, "upstream_stream_error"
        await send({"type": "http.response.body", "more_body": False,
                    "body": _stream_error(req, exc, edges.first, edges.previous, edges.last)})
    finally:
        watch.stop()
        stats.answered(lane, scanner)
        outcome.first_token_at = scanner.first_token_at
        outcome.take_usage(scanner.usage_or_estimate(req.input_estimate))


class _StreamEdges:
    """The first and the last two chunks relayed: enough to end a stream well-formed if it breaks off."""

    __slots__ = ("first", "previous", "last")

    def __init__(self) -> None:
        self.first = self.previous = self.last = b""


def _sink(scanner: StreamScanner, usage_filter: UsageChunkFilter | None, edges: _StreamEdges,
          write: Callable[[bytes], bool]) -> Callable[[bytes], bool]:
    """What runs per upstream chunk (in the upstream's read callback): scan, keep the edges, filter, write."""
    def sink(chunk: bytes) -> bool:
        scanner.feed(chunk)
        if not edges.first:
            edges.first = chunk
        edges.previous, edges.last = edges.last, chunk
        out = usage_filter.feed(chunk) if usage_filter is not None else chunk
        return write(out) if out else True
    return sink


class _AsgiStream:
    """The ClientStream interface over plain ASGI ``send``, for servers that offer none: a write
    queues and asks for ``drain``, which sends what queued (one task wake-up per upstream read)."""

    __slots__ = ("_send", "_queued")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._queued: list[bytes] = []

    def write(self, chunk: bytes) -> bool:
        self._queued.append(chunk)
        return False

    async def drain(self) -> None:
        if self._queued:
            body = b"".join(self._queued)
            self._queued.clear()
            await self._send({"type": "http.response.body", "body": body, "more_body": True})


def _client_stream(scope: Scope) -> ClientStream | None:
    extensions = scope.get("extensions")
    return extensions.get(CLIENT_STREAM) if extensions else None


def _hung_up(outcome: Outcome, usage: Usage) -> None:
    outcome.status, outcome.error_code = 499, "client_disconnected"
    outcome.take_usage(usage)


def _content_type(attempt: Attempt) -> bytes:
    for name, value in attempt.response.headers:
        if name == b"content-type":
            return value
    return b"application/json"


def _response_headers(attempt: Attempt, rid: str, relay_rate_limits: bool) -> list[tuple[bytes, bytes]]:
    """Laneway's own headers and what it relays of the provider's: its request id as
    ``x-upstream-request-id``, and its ``x-ratelimit-*`` (the serving deployment's windows)
    unless the client has limits of its own at Laneway, which then describe its quota instead."""
    dep = attempt.deployment
    headers = []
    for name, value in attempt.response.headers:
        if name in _RELAYED or (relay_rate_limits and name.startswith(_RATE_LIMIT)):
            headers.append((name, value))
        elif name == b"x-request-id":
            headers.append((b"x-upstream-request-id", value))
    headers += [
        (b"x-request-id", rid.encode()),
        (b"x-laneway-deployment", dep.name.encode()),
        (b"x-laneway-lane", dep.hardware.encode()),
        (b"x-laneway-route-reason", attempt.reason.encode()),
    ]
    return headers


def _stream_error(req: ModelRequest, exc: UpstreamError, first: bytes, previous: bytes, last: bytes) -> bytes:
    """The in-band end of a broken stream: Responses gets ``error`` + ``response.failed`` numbered after
    the last relayed event; chat and completions an ``error`` payload, which the SDKs raise on."""
    message = f"The upstream stream broke off ({exc.kind}); the response is incomplete."
    if req.endpoint == "responses":
        return sse(failure_events(req.body, response_id(first), next_sequence_number(previous, last),
                                  "upstream_stream_error", message))
    error = {"message": message, "type": "server_error", "param": None, "code": "upstream_stream_error"}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
