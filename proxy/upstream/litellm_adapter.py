"""Providers that do not speak OpenAI's wire format (Anthropic, ...) through litellm.

litellm translates an OpenAI chat request to the provider's API and the answer back to
OpenAI chunks; this adapter turns those into the same byte stream and status/headers
interface a pass-through upstream response has, so the API layer relays both alike.
Chat is served as chat (``litellm_chat`` puts it on OpenAI's wire); Responses requests are
translated to a chat call and the answer back (``responses_via_chat``).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from proxy.call import ModelRequest, UpstreamConnectError, UpstreamError, UpstreamTimeout
from proxy.config.schema import Deployment
from proxy.errors import UnsupportedEndpoint
from proxy.litellm_import import litellm
from proxy.upstream.litellm_chat import chat_chunks, chat_completion
from proxy.upstream.responses_via_chat import ResponsesStream, chat_params, response_from_chat, sse

# OpenAI chat parameters forwarded to litellm as given; anything else is dropped by litellm's own mapping.
_CHAT_PARAMS = (
    "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "tools",
    "tool_choice", "response_format", "user", "metadata", "n", "parallel_tool_calls", "reasoning_effort",
)
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]
_JSON_HEADERS = [(b"content-type", b"application/json")]


class LitellmResponse:
    """A litellm result as an ``UpstreamResponse``: the provider's chunks re-encoded by ``encode``."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"", stream=None,
                 encode: "StreamEncoder | None" = None) -> None:
        self.status = status
        self.headers = headers
        self._body = body
        self._stream = stream
        self._encode = encode

    async def iter_body(self) -> AsyncIterator[bytes]:
        if self._stream is None or self._encode is None:
            yield self._body
            return
        encode = self._encode
        head = encode.start()
        if head:
            yield head
        try:
            async for chunk in self._stream:
                out = encode.chunk(chunk.model_dump())
                if out:
                    yield out
        except Exception as exc:
            raise _upstream_error(exc) from None
        finally:
            self.release()
        yield encode.end()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_body()])

    def release(self) -> None:
        """Drop the provider stream; a cancelled iteration has already closed its HTTP response."""
        self._stream = None

    def abandon(self) -> bytes:
        """Chunks are re-encoded as they are read, so nothing unread is held."""
        self.release()
        return b""


class StreamEncoder(Protocol):
    """Chat chunks (dumped to dicts) as the bytes of the client's stream: start, per chunk, end."""

    def start(self) -> bytes: ...
    def chunk(self, chunk: dict[str, Any]) -> bytes: ...
    def end(self) -> bytes: ...


class ChatSse:
    """OpenAI chat chunks; ``include_usage``: the client asked, so chunks say ``"usage": null``."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chat_chunks(chunk, self.include_usage))

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"


class ResponsesSse:
    """The Responses event stream for a chat stream."""

    def __init__(self, events: ResponsesStream) -> None:
        self.events = events

    def start(self) -> bytes:
        return b"".join(map(sse, self.events.start()))

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return b"".join(map(sse, self.events.feed(chunk)))

    def end(self) -> bytes:
        return b"".join(map(sse, self.events.finish()))


class LitellmTarget:
    """Sends chat and Responses requests for one deployment through ``litellm.acompletion``."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self._model = f"{deployment.provider}/{deployment.model}"

    def injects_usage(self, req: ModelRequest) -> bool:
        """Chat streams always ask for usage; a Responses stream ends with it anyway."""
        return req.endpoint == "chat" and req.stream and not req.client_wants_usage

    async def forward(self, method: str, path: str, request_id: str) -> LitellmResponse:
        raise UnsupportedEndpoint(f"Deployment '{self.deployment.name}' ({self.deployment.provider}) keeps no stored responses.")

    async def send(self, req: ModelRequest, pin: object = None) -> LitellmResponse:
        """``pin`` is ignored: litellm speaks HTTP only (a WebSocket turn arrives with its whole input)."""
        if req.endpoint == "chat":
            params = {name: req.body[name] for name in _CHAT_PARAMS if name in req.body}
            return await self._call(req, params, ChatSse(req.client_wants_usage), chat_completion)
        if req.endpoint == "responses":
            body = req.body
            return await self._call(req, chat_params(body), ResponsesSse(ResponsesStream(body, self.deployment.model)),
                                    lambda result: response_from_chat(body, result))
        raise UnsupportedEndpoint(
            f"Deployment '{self.deployment.name}' ({self.deployment.provider}) serves /v1/chat/completions and "
            "/v1/responses only; use a route with an OpenAI-compatible deployment for this endpoint.")

    async def _call(self, req: ModelRequest, params: dict[str, Any], encoder: StreamEncoder,
                    whole: Callable[[dict[str, Any]], dict[str, Any]]) -> LitellmResponse:
        dep = self.deployment
        if req.stream:
            params["stream"] = True
            params["stream_options"] = {"include_usage": True}
        try:
            result = await litellm().acompletion(
                model=self._model,
                api_base=dep.base_url,
                api_key=dep.api_key or "unset",
                timeout=dep.timeouts.total_s,
                num_retries=0,
                extra_headers=dict(dep.headers) or None,
                **params,
            )
        except Exception as exc:
            return _error_response(exc)
        if req.stream:
            return LitellmResponse(200, _SSE_HEADERS, stream=result, encode=encoder)
        return LitellmResponse(200, _JSON_HEADERS, orjson.dumps(whole(result.model_dump())))


def _error_response(exc: Exception) -> LitellmResponse:
    """A provider error as an OpenAI error response; connect failures and timeouts raise instead."""
    error = _upstream_error(exc)
    if not isinstance(error, (UpstreamConnectError, UpstreamTimeout)) and getattr(exc, "status_code", None):
        status = int(exc.status_code)
        body = {"error": {"message": str(getattr(exc, "message", exc)), "type": _error_type(status), "param": None, "code": None}}
        return LitellmResponse(status, _JSON_HEADERS, orjson.dumps(body))
    raise error


def _upstream_error(exc: Exception) -> UpstreamError:
    """litellm reports some providers' connect failures as a 500 (Anthropic's: an InternalServerError
    over aiohttp's ClientConnectorError), so the transport error is looked for in the whole chain."""
    import httpx  # litellm's transport, loaded with it (imported here to keep startup lazy)

    errors = litellm().exceptions
    if isinstance(exc, errors.Timeout) or _caused_by(exc, (TimeoutError, httpx.TimeoutException)):
        return UpstreamTimeout(f"provider timed out: {type(exc).__name__}")
    if isinstance(exc, errors.APIConnectionError) or _caused_by(exc, (OSError, httpx.TransportError)):
        return UpstreamConnectError(f"provider unreachable: {type(exc).__name__}")
    return UpstreamError(f"provider error: {type(exc).__name__}")


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:  # a chain can loop
        if isinstance(cause, kinds):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _error_type(status: int) -> str:
    return {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
