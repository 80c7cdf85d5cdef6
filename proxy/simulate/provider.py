"""Raw ASGI 3 simulated LLM provider (OpenAI + Anthropic shapes, quotas, faults).

Raw ASGI and precomputed byte templates keep the per-request cost to a few
microseconds, so the simulator is not the bottleneck when it stands in as the
upstream of a proxy benchmark. See `text` for the token model.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from .profiles import Profile
from .ratelimit import Headers, RateLimiter, retry_headers
from .render import AnthropicRenderer, ChatRenderer, CompletionRenderer, Renderer, ResponsesRenderer, Turn
from .text import count_input_tokens, count_text_tokens, embedding, requested_output
from .ws import SimulatedSocket

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
HeaderSeq = Sequence[tuple[bytes, bytes]]
Fault = tuple[str, float]  # (mode, argument: HTTP status or milliseconds)

BATCH_S = 0.010  # pace streams with one sleep per ~10 ms of tokens, not one per token
JSON = b"application/json"
SSE = b"text/event-stream; charset=utf-8"
_ERROR_STATUSES = (400, 429, 500, 503)
_OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                       429: "rate_limit_error", 500: "server_error", 503: "server_error"}
_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                          429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}
_FAULT_MESSAGES = {
    400: ("Simulated invalid request.", None),
    429: ("Simulated rate limit: please retry after 1 second.", "rate_limit_exceeded"),
    500: ("Simulated internal server error.", None),
    503: ("Simulated: the server is overloaded, please retry.", "service_unavailable"),
}
_ID_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-", "responses": "resp_", "messages": "msg_"}


class SimulatedDrop(Exception):
    """Raised mid-response so uvicorn closes the connection abruptly (drop_mid_stream fault)."""


class _QuietDrops(logging.Filter):
    """Keep uvicorn from logging a traceback for every injected drop, and for hung or
    streaming requests cancelled when the server stops."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], (SimulatedDrop, asyncio.CancelledError)))


def _install_log_filter() -> None:
    log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in log.filters):
        log.addFilter(_QuietDrops())


def parse_fault(spec: str) -> Fault:
    """Parse a fault mode: 400, 429, 500, 503, hang, drop_mid_stream or slow_first_byte:<ms>."""
    spec = spec.strip()
    if spec.isdigit() and int(spec) in _ERROR_STATUSES:
        return "error", float(spec)
    if spec in ("hang", "drop_mid_stream"):
        return spec, 0.0
    head, _, arg = spec.partition(":")
    if head == "slow_first_byte":
        try:
            ms = float(arg)
        except ValueError:
            ms = -1.0
        if ms >= 0:
            return head, ms
    raise ValueError(f"unknown fault {spec!r}; valid: 400, 429, 500, 503, hang, drop_mid_stream, slow_first_byte:<ms>")


class Stats:
    """Counters served by GET /sim/stats. `requests` counts every authorised, parseable model
    request (faulted and rate-limited ones included);
    `input_tokens` only admitted ones; `output_tokens` only tokens actually sent."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = self.input_tokens = self.output_tokens = 0
        self.disconnects = self.rate_limited = self.faults = 0
        self.by_model: dict[str, list[int]] = {}  # model -> [requests, input_tokens, output_tokens]

    def model(self, name: str) -> list[int]:
        row = self.by_model.get(name)
        if row is None:
            row = self.by_model[name] = [0, 0, 0]
        return row

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "disconnects": self.disconnects,
            "rate_limited": self.rate_limited,
            "faults": self.faults,
            "by_model": {
                m: {"requests": r, "input_tokens": i, "output_tokens": o}
                for m, (r, i, o) in list(self.by_model.items())
            },
        }


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ClientWatch:
    """Notices http.disconnect while a request sleeps or streams (one task per request, not per pause)."""

    __slots__ = ("gone", "_loop", "_task", "_waiter")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._task = self._loop.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._waiter is not None:
            _wake(self._waiter)

    async def pause(self, seconds: float | None) -> bool:
        """Sleep `seconds` (None = until disconnect); False if the client went away."""
        if self.gone:
            return False
        fut = self._waiter = self._loop.create_future()
        handle = None if seconds is None else self._loop.call_later(seconds, _wake, fut)
        try:
            await fut
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()
        return not self.gone

    def close(self) -> None:
        self._task.cancel()


class _Ctx:
    """Per-request state gathered in one pass over the headers."""

    __slots__ = ("receive", "send", "request_id", "key", "fault", "anthropic", "watcher")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.receive, self.send = receive, send
        self.request_id: bytes | None = None
        self.key: bytes | None = None
        self.fault: bytes | None = None
        self.anthropic = False
        self.watcher: ClientWatch | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    self.key = value[7:].strip()
            elif name == b"x-api-key":
                self.key = value
            elif name == b"x-request-id":
                self.request_id = value
            elif name == b"x-sim-fault":
                self.fault = value

    def watch(self) -> ClientWatch:
        if self.watcher is None:
            self.watcher = ClientWatch(self.receive)
        return self.watcher


def _norm_path(path: str) -> str:
    """'/v1/chat/completions', '/chat/completions' and '/v1/v1/...' all map to 'chat/completions'."""
    path = path.strip("/")
    while path.startswith("v1/") or path == "v1":
        path = path[3:]
    return path


class SimulatorApp:
    """The ASGI application; `stats`, `faults` and `limiter` are inspectable in-process."""

    def __init__(self, profile: Profile, require_key: str | None = None) -> None:
        self.profile = profile
        self.stats = Stats()
        self.limiter = RateLimiter(profile)
        self.faults: deque[Fault] = deque()
        self._key = require_key.encode() if require_key else None
        self._ids = itertools.count(1)
        self.websocket = SimulatedSocket(self)  # Responses WebSocket mode on /v1/responses
        self._models_body = orjson.dumps(
            {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "laneway-sim"}
                                        for m in profile.model_ids]}
        )
        self._routes: dict[tuple[str, str], Callable[[_Ctx], Awaitable[None]]] = {
            ("POST", "chat/completions"): lambda c: self._generate(c, "chat"),
            ("POST", "completions"): lambda c: self._generate(c, "completions"),
            ("POST", "responses"): lambda c: self._generate(c, "responses"),
            ("POST", "messages"): self._messages,
            ("POST", "embeddings"): lambda c: self._generate(c, "embeddings"),
            ("GET", "models"): self._models,
            ("GET", "sim/stats"): self._sim_stats,
            ("POST", "sim/reset"): self._sim_reset,
            ("POST", "sim/faults"): self._sim_faults,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self.websocket(scope, receive, send)
            elif scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        ctx = _Ctx(scope, receive, send)
        handler = self._routes.get((scope["method"], _norm_path(scope["path"])))
        try:
            if handler is None:
                await self._error(ctx, 404, f"Unknown request URL: {scope['method']} {scope['path']}", "unknown_url")
            else:
                await handler(ctx)
        finally:
            if ctx.watcher is not None:
                ctx.watcher.close()

    # --- plumbing -------------------------------------------------------------------------

    async def _start(self, ctx: _Ctx, status: int, ctype: bytes, headers: HeaderSeq, length: int | None) -> None:
        h = [(b"content-type", ctype), *headers]
        if length is not None:
            h.append((b"content-length", b"%d" % length))
        else:
            h.append((b"cache-control", b"no-cache"))
        if ctx.request_id is not None:
            h.append((b"x-request-id", ctx.request_id))
        await ctx.send({"type": "http.response.start", "status": status, "headers": h})

    async def _respond(self, ctx: _Ctx, status: int, body: bytes, headers: HeaderSeq = ()) -> None:
        await self._start(ctx, status, JSON, headers, len(body))
        await ctx.send({"type": "http.response.body", "body": body})

    async def _error(self, ctx: _Ctx, status: int, message: str, code: str | None = None,
                     headers: HeaderSeq = ()) -> None:
        if ctx.anthropic:
            err = {"type": _ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}
            body = orjson.dumps({"type": "error", "error": err})
        else:
            err = {"message": message, "type": _OPENAI_ERROR_TYPES.get(status, "server_error"),
                   "param": None, "code": code}
            body = orjson.dumps({"error": err})
        await self._respond(ctx, status, body, headers)

    async def _read_json(self, ctx: _Ctx) -> dict[str, Any] | None:
        """The request body as a JSON object, or None after answering 400."""
        chunks = []
        while True:
            msg = await ctx.receive()
            if msg["type"] == "http.disconnect":
                return None
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            await self._error(ctx, 400, f"We could not parse the JSON body of your request. ({exc})")
            return None
        if not isinstance(body, dict):
            await self._error(ctx, 400, "The request body must be a JSON object.")
            return None
        return body

    def _authorized(self, ctx: _Ctx) -> bool:
        return self._key is None or ctx.key == self._key

    # --- model endpoints ------------------------------------------------------------------

    async def _messages(self, ctx: _Ctx) -> None:
        ctx.anthropic = True
        await self._generate(ctx, "messages")

    async def _generate(self, ctx: _Ctx, kind: str) -> None:
        if not self._authorized(ctx):
            await self._error(ctx, 401, "Incorrect API key provided.", "invalid_api_key")
            return
        body = await self._read_json(ctx)
        if body is None:
            return
        stats = self.stats
        model = body.get("model")
        model = model if isinstance(model, str) and model else self.profile.model_ids[0]
        row = stats.model(model)
        stats.requests += 1
        row[0] += 1
        fault = await self._take_fault(ctx)
        if fault is None:
            return
        mode, arg = fault
        if mode == "error":
            await self._fault_error(ctx, int(arg))
            return
        if mode == "hang":
            await ctx.watch().pause(None)  # answer never; wait for the client to give up
            stats.disconnects += 1
            return
        if mode == "slow_first_byte" and not await ctx.watch().pause(arg / 1000):
            stats.disconnects += 1
            return
        try:
            n, capped = (0, False) if kind == "embeddings" else requested_output(
                body, self.profile.default_output_tokens)
            input_tokens = count_input_tokens(body)
        except ValueError as exc:
            await self._error(ctx, 400, str(exc))
            return
        rl_headers: Headers = []
        if self.limiter.enabled:
            now = time.monotonic()
            wait = self.limiter.admit(now, input_tokens + n)
            rl_headers = self.limiter.headers(now)
            if wait:
                stats.rate_limited += 1
                msg = f"Rate limit reached for {model}: please try again in {wait:.3f}s."
                await self._error(ctx, 429, msg, "rate_limit_exceeded", rl_headers + retry_headers(wait))
                return
        stats.input_tokens += input_tokens
        row[1] += input_tokens
        if kind == "embeddings":
            await self._embeddings(ctx, body, model, rl_headers)
            return
        await self._answer(ctx, kind, body, Turn(
            rid=f"{_ID_PREFIX[kind]}sim{next(self._ids):016x}", model=model, created=int(time.time()), n=n,
            input_tokens=input_tokens, capped=capped,
            include_usage=_include_usage(body), continuous_usage=_continuous_usage(body),
        ), mode == "drop_mid_stream", rl_headers, row)

    async def _take_fault(self, ctx: _Ctx) -> Fault | None:
        """This request's fault (x-sim-fault header first, then the queue), ("none", 0) when there is
        none, or None after answering 400 to an unknown mode."""
        if ctx.fault is not None:
            try:
                fault = parse_fault(ctx.fault.decode("latin-1"))
            except ValueError as exc:
                await self._error(ctx, 400, str(exc))
                return None
        elif self.faults:
            fault = self.faults.popleft()
        else:
            return "none", 0.0
        self.stats.faults += 1
        return fault

    async def _fault_error(self, ctx: _Ctx, status: int) -> None:
        message, code = _FAULT_MESSAGES[status]
        headers = self.limiter.headers(time.monotonic())
        if status == 429:
            headers += retry_headers(1.0)
        await self._error(ctx, status, message, code, headers)

    async def _answer(self, ctx: _Ctx, kind: str, body: dict[str, Any], turn: Turn, drop: bool,
                      headers: Headers, row: list[int]) -> None:
        renderer: Renderer
        if kind == "chat":
            renderer = ChatRenderer(turn)
        elif kind == "completions":
            renderer = CompletionRenderer(turn)
        elif kind == "responses":
            renderer = ResponsesRenderer(turn, body.get("max_output_tokens"))
        else:
            renderer = AnthropicRenderer(turn)
        produce = self._stream if body.get("stream") is True else self._unary
        sent, gone = await produce(ctx, renderer, turn.n, drop, headers)
        self.stats.output_tokens += sent
        row[2] += sent
        if gone:
            self.stats.disconnects += 1
        elif drop:
            raise SimulatedDrop(f"simulated drop after {sent} of {turn.n} tokens")

    async def _unary(self, ctx: _Ctx, r: Renderer, n: int, drop: bool, headers: Headers) -> tuple[int, bool]:
        """Wait the whole generation time, then answer; returns (tokens sent, client gone)."""
        p = self.profile
        delay = p.ttft_ms / 1000 + (n / p.tokens_per_s if p.tokens_per_s > 0 else 0.0)
        if delay > 0 and not await ctx.watch().pause(delay):
            return 0, True
        body = r.complete()
        if not drop:
            await self._respond(ctx, 200, body, headers)
            return n, False
        await self._start(ctx, 200, JSON, headers, len(body))
        await ctx.send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        return n // 2, False

    async def _stream(self, ctx: _Ctx, r: Renderer, n: int, drop: bool, headers: Headers) -> tuple[int, bool]:
        """Stream SSE paced by the profile; returns (tokens sent, client gone)."""
        limit = n // 2 if drop else n
        send = ctx.send
        await self._start(ctx, 200, SSE, headers, None)
        if self.profile.instant:
            chunk = r.prelude() + b"".join([r.token(i) for i in range(limit)])
            if drop:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                await send({"type": "http.response.body", "body": chunk + r.epilogue()})
            return limit, False
        sent = 0
        try:
            await send({"type": "http.response.body", "body": r.prelude(), "more_body": True})
            sent, gone = await self._paced_tokens(ctx, r, limit)
            if gone:
                return sent, True
            if not drop:
                await send({"type": "http.response.body", "body": r.epilogue()})
        except OSError:
            return sent, True
        return sent, False

    async def _paced_tokens(self, ctx: _Ctx, r: Renderer, limit: int) -> tuple[int, bool]:
        """Send tokens 0..limit-1 at the profile's rate; returns (tokens sent, client gone)."""
        watch = ctx.watch()
        tps = self.profile.tokens_per_s
        if self.profile.ttft_ms > 0 and not await watch.pause(self.profile.ttft_ms / 1000):
            return 0, True
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while i < limit:
            due = limit if tps <= 0 else min(limit, int((loop.time() - start) * tps) + 1)
            await ctx.send({"type": "http.response.body", "body": b"".join([r.token(k) for k in range(i, due)]),
                            "more_body": True})
            i = due
            if i < limit and not await watch.pause(max(start + i / tps - loop.time(), BATCH_S)):
                return i, True
        return i, False

    async def _embeddings(self, ctx: _Ctx, body: dict[str, Any], model: str, headers: Headers) -> None:
        raw = body.get("input")
        items = raw if isinstance(raw, list) else [raw]
        if raw is None or not items:
            await self._error(ctx, 400, "'input' is required and must be a string or a list of strings.")
            return
        texts = [x if isinstance(x, str) else str(x) for x in items]
        if self.profile.ttft_ms > 0 and not await ctx.watch().pause(self.profile.ttft_ms / 1000):
            self.stats.disconnects += 1
            return
        prompt = sum(count_text_tokens(t) for t in texts)
        out = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": embedding(t)} for i, t in enumerate(texts)],
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        await self._respond(ctx, 200, orjson.dumps(out), headers)

    # --- listing and ops ------------------------------------------------------------------

    async def _models(self, ctx: _Ctx) -> None:
        if not self._authorized(ctx):
            await self._error(ctx, 401, "Incorrect API key provided.", "invalid_api_key")
            return
        await self._respond(ctx, 200, self._models_body)

    async def _sim_stats(self, ctx: _Ctx) -> None:
        await self._respond(ctx, 200, orjson.dumps(self.stats.snapshot()))

    async def _sim_reset(self, ctx: _Ctx) -> None:
        self.stats.reset()
        self.limiter.reset()
        self.faults.clear()
        await self._respond(ctx, 200, b'{"ok":true}')

    async def _sim_faults(self, ctx: _Ctx) -> None:
        body = await self._read_json(ctx)
        if body is None:
            return
        count = body.get("count", 1)
        try:
            fault = parse_fault(str(body.get("mode", "")))
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError("'count' must be a non-negative integer")
        except ValueError as exc:
            await self._error(ctx, 400, str(exc))
            return
        self.faults.extend([fault] * count)
        await self._respond(ctx, 200, orjson.dumps({"queued": len(self.faults)}))


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _continuous_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage")) and bool(options.get("continuous_usage_stats"))


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_app(profile: Profile) -> SimulatorApp:
    """ASGI app simulating `profile`; requires key $SIM_REQUIRE_KEY if set now."""
    _install_log_filter()
    return SimulatorApp(profile, os.environ.get("SIM_REQUIRE_KEY") or None)
