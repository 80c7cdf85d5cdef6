"""uvicorn's httptools protocol with the limits an internet-facing edge needs.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) but not a request
being read: a client may send a header line every few seconds, or declare a Content-Length
and never send the body, and hold a connection and its buffers for as long as it likes.
Its ``limit_concurrency`` is checked only once a request's headers are complete (a slowloris
never gets there) and answers in text/plain; the httptools parser has no header size limit;
a request the parser rejects gets a text/plain 400. Here, per connection:

- a request's headers must be complete within ``server.header_timeout_s`` of its first
  byte (of the connection's, for the first request), its body within ``body_timeout_s``
  of the headers; else 408 and close (a connection that never sent a byte is just closed);
- a worker keeps at most ``server.max_connections`` open (HTTP and WebSocket); the next one
  gets 503 and is closed;
- headers beyond ``server.max_header_bytes``: 431 and close;
- every refusal, the parser's included, is an OpenAI error body.

A timer is armed only while a request is still incomplete at the end of a read, so a
request that arrives whole (the usual case) costs no timer at all.

Each request's scope also carries a ``ClientStream`` (``scope["extensions"][CLIENT_STREAM]``):
a streamed response's body chunks written straight to the connection, so a relay can write
them from the upstream's read callback instead of waking a task and an ASGI ``send`` per chunk.
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from proxy.config.schema import ServerSettings
from proxy.api.errors import ProxyError

_IDLE, _HEADERS, _BODY = 0, 1, 2
CLIENT_STREAM = "laneway.client_stream"


class ClientStream:
    """The body of one streamed response, written to the client's connection without ASGI messages.

    Usable once the app has sent ``http.response.start`` through ASGI for a chunked response
    (``ready``) and until it sends the last ``http.response.body`` through ASGI, as usual.
    ``write`` never blocks: it says whether the client is keeping up, and ``drain`` waits until it is.
    """

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    def ready(self) -> bool:
        cycle = self._cycle
        return cycle.response_started and cycle.chunked_encoding is True and not cycle.response_complete

    def write(self, chunk: bytes) -> bool:
        """Send one non-empty chunk (dropped once the client is gone); False: wait for ``drain``."""
        cycle = self._cycle
        if cycle.disconnected:
            return True  # as ASGI send does; the disconnect reaches the app through receive()
        cycle.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return not cycle.flow.write_paused

    async def drain(self) -> None:
        cycle = self._cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()


class EdgeHttpProtocol(HttpToolsProtocol):
    """Pass ``http_protocol(settings)`` as uvicorn's ``http``; otherwise behaves as ``http="httptools"``."""

    def __init__(self, *args: Any, settings: ServerSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self._stage = _IDLE  # what the connection is waiting for from the client
        self._timed_stage = _IDLE  # the stage the running timer bounds
        self._timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    # -- asyncio.Protocol -----------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.settings.max_connections:
            self.logger.warning("Refused a connection: %d open, server.max_connections is %d.",
                                len(self.connections) - 1, self.settings.max_connections)
            self._refuse(ProxyError(503, "This proxy worker has too many open connections; retry shortly.",
                                    code="too_many_connections", headers={"retry-after": "1"}))
            return
        self._stage = _HEADERS  # the first request's clock starts with the connection
        self._after_read()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._stage != _BODY:
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.logger.warning("Invalid HTTP request received: %s", exc)
            self._refuse(ProxyError(400, f"Invalid HTTP request: {exc}.", code="invalid_http_request"))
            return
        except httptools.HttpParserUpgrade:
            self._stage = _IDLE
            self._after_read()  # the WebSocket protocol takes over the connection and its timeouts
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._stage == _HEADERS and self._header_bytes > self.settings.max_header_bytes:
            self._refuse(ProxyError(431, f"Request headers are larger than this proxy accepts "
                                    f"({self.settings.max_header_bytes} bytes; server.max_header_bytes).",
                                    type="invalid_request_error", code="request_headers_too_large"))
            return
        self._after_read()

    # -- httptools callbacks --------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._stage = _HEADERS

    def on_headers_complete(self) -> None:
        self._stage = _BODY
        self._header_bytes = 0
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # a request (not an upgrade) the app is about to see
            extensions = self.scope.get("extensions")
            if extensions is None:
                extensions = self.scope["extensions"] = {}
            extensions[CLIENT_STREAM] = ClientStream(cycle)

    def on_message_complete(self) -> None:
        self._stage = _IDLE
        super().on_message_complete()

    # -- timeouts and refusals ------------------------------------------------
    def _after_read(self) -> None:
        """Bound the stage a request is left in once a read is handled; nothing to do when unchanged."""
        stage = self._stage
        if stage == self._timed_stage:
            return
        self._stop_timer()
        self._timed_stage = stage
        if stage != _IDLE:
            timeout = self.settings.header_timeout_s if stage == _HEADERS else self.settings.body_timeout_s
            self._timer = self.loop.call_later(timeout, self._expired)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timed_stage = _IDLE

    def _expired(self) -> None:
        self._timer = None
        self._timed_stage = _IDLE
        if self.transport.is_closing():
            return
        if self._stage == _HEADERS:
            if self._header_bytes == 0:
                self.transport.close()  # nothing was ever asked: nothing to answer
                return
            part, field, timeout = "headers", "header_timeout_s", self.settings.header_timeout_s
        else:
            if self.cycle.response_started:  # answered already (say 413) while the body still trickles
                self.transport.close()
                return
            self.cycle.disconnected = True  # the app's receive() answers http.disconnect
            self.cycle.message_event.set()
            part, field, timeout = "body", "body_timeout_s", self.settings.body_timeout_s
        self._refuse(ProxyError(408, f"The request {part} did not arrive within {timeout:g}s (server.{field}).",
                                type="invalid_request_error", code="request_timeout"))

    def _refuse(self, error: ProxyError) -> None:
        """Answer ``error`` in OpenAI's shape and close: the connection's state is not to be trusted."""
        body = error.body()
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        for name, value in error.headers.items():
            head += [name.encode(), b": ", value.encode(), b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self._stop_timer()
        self._stage = _IDLE
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def http_protocol(settings: ServerSettings) -> Callable[..., EdgeHttpProtocol]:
    """uvicorn's ``http=`` for a policy's server section (picklable, for ``--workers``)."""
    return functools.partial(EdgeHttpProtocol, settings=settings)
