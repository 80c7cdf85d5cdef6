"""Raw ASGI 3 simulated LLM provider (OpenAI + Anthropic shapes, quotas, faults).

Raw ASGI and precomputed byte templates keep the per-request cost to a few
microseconds, so the simulator is not the bottleneck when it stands in as the
upstream of a proxy benchmark. See `text` for the token model, `answer` for what
the model says (tool calls, JSON modes), `validate` for the 400s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from . import validate
from .answer import (
    Plan, as_items, chat_functions, cues_from_anthropic, cues_from_items, cues_from_messages, messages_choice,
    messages_functions, plan, responses_functions,
)
from .asgi import HeaderSeq, Receive, Scope, Send, SimulatedDrop, norm_path
from .profiles import Profile
from .ratelimit import Headers, retry_headers
from .render import (
    AnthropicRenderer, ChatRenderer, CompletionRenderer, Renderer, ResponsesRenderer, Turn, response_fields,
)
from .state import Fault, ProviderState, parse_fault
from .store import Stored
from .text import count_input_tokens, count_text_tokens, embedding, embedding_base64, requested_output
from .ws import SimulatedSocket

JSON = b"application/json"
SSE = b"text/event-stream; charset=utf-8"
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
_VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    "chat": validate.chat, "completions": validate.completions, "responses": validate.responses,
    "messages": validate.messages, "embeddings": validate.embeddings,
}
_RESPONSE_ROUTES = ("GET", "DELETE", "GET input_items", "POST cancel")
_WORDS = Plan(None)


class _QuietDrops(logging.Filter):
    """Keep uvicorn from logging a traceback for every injected drop, and for hung or
    streaming requests cancelled when the server stops."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], (SimulatedDrop, asyncio.CancelledError)))


def _install_log_filter() -> None:
    log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in log.filters):
        log.addFilter(_QuietDrops())


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

    __slots__ = ("receive", "send", "request_id", "key", "fault", "anthropic", "watcher", "started", "query")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.receive, self.send = receive, send
        self.request_id: bytes | None = None
        self.key: bytes | None = None
        self.fault: bytes | None = None
        self.anthropic = False
        self.watcher: ClientWatch | None = None
        self.started = time.perf_counter()
        self.query: bytes = scope.get("query_string", b"")
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


class _Request:
    """One validated generation request: what to answer, and for Responses what to store."""

    __slots__ = ("kind", "body", "model", "turn", "drop", "items", "conversation")

    def __init__(self, kind: str, body: dict[str, Any], model: str) -> None:
        self.kind, self.body, self.model = kind, body, model
        self.items: list[Any] = []  # Responses: this request's own input items
        self.conversation: list[Any] = []  # Responses: everything the model sees (previous turns included)


class SimulatorApp:
    """The ASGI application; `stats`, `faults`, `limiter` and `store` are inspectable in-process."""

    def __init__(self, profile: Profile, require_key: str | None = None) -> None:
        self.state = ProviderState(profile, require_key.encode() if require_key else None)
        self.profile = profile
        self.stats = self.state.stats
        self.limiter = self.state.limiter
        self.faults = self.state.faults
        self.store = self.state.store
        self._background: dict[str, asyncio.Task[None]] = {}
        self.websocket = SimulatedSocket(self.state)  # Responses WebSocket mode on /v1/responses
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
        method, path = scope["method"], norm_path(scope["path"])
        handler = self._routes.get((method, path))
        try:
            if handler is not None:
                await handler(ctx)
            elif path.startswith("responses/"):
                await self._stored(ctx, method, path.split("/")[1:])
            else:
                await self._error(ctx, 404, f"Unknown request URL: {method} {scope['path']}", "unknown_url")
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
        if self.profile.provider_headers:
            h.append((b"x-request-id", ctx.request_id if ctx.request_id is not None else
                      b"req_sim%016x" % self.state.next_id()))
            h.append((b"openai-processing-ms", b"%d" % ((time.perf_counter() - ctx.started) * 1000)))
        await ctx.send({"type": "http.response.start", "status": status, "headers": h})

    async def _respond(self, ctx: _Ctx, status: int, body: bytes, headers: HeaderSeq = ()) -> None:
        await self._start(ctx, status, JSON, headers, len(body))
        await ctx.send({"type": "http.response.body", "body": body})

    async def _error(self, ctx: _Ctx, status: int, message: str, code: str | None = None,
                     headers: HeaderSeq = (), param: str | None = None) -> None:
        if ctx.anthropic:
            err = {"type": _ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}
            body = orjson.dumps({"type": "error", "error": err})
        else:
            err = {"message": message, "type": _OPENAI_ERROR_TYPES.get(status, "server_error"),
                   "param": param, "code": code}
            body = orjson.dumps({"error": err})
        await self._respond(ctx, status, body, headers)

    async def _invalid(self, ctx: _Ctx, exc: validate.InvalidRequest) -> None:
        await self._error(ctx, 400, exc.message, exc.code, self._quota_headers(), exc.param)

    def _quota_headers(self) -> Headers:
        return self.limiter.headers(time.monotonic())

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
        return self.state.key is None or ctx.key == self.state.key

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
        req = _Request(kind, body, model)
        try:
            _VALIDATORS[kind](body)
            if kind == "responses":
                self._continue(req)
        except validate.InvalidRequest as exc:
            await self._invalid(ctx, exc)
            return
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
        turn, charge = self._turn(req)
        now = time.monotonic()
        wait = self.limiter.admit(now, charge)
        rl_headers = self.limiter.headers(now)
        if wait:
            stats.rate_limited += 1
            msg = f"Rate limit reached for {model}: please try again in {wait:.3f}s."
            await self._error(ctx, 429, msg, "rate_limit_exceeded", rl_headers + retry_headers(wait))
            return
        stats.input_tokens += turn.input_tokens
        row[1] += turn.input_tokens
        if kind == "embeddings":
            await self._embeddings(ctx, body, model, rl_headers)
            return
        await self._answer(ctx, req, turn, mode == "drop_mid_stream", rl_headers, row)

    def _continue(self, req: _Request) -> None:
        """Responses: this request's items and the whole conversation (a stored previous response's
        context first); InvalidRequest for a previous_response_id the store does not hold."""
        body = req.body
        req.items = as_items(body.get("input"))
        previous = body.get("previous_response_id")
        context: list[Any] = []
        if previous is not None:
            entry = self.store.get(previous)
            if entry is None:
                raise validate.InvalidRequest(f"Previous response with id '{previous}' not found.",
                                              "previous_response_id", "previous_response_not_found")
            context = entry.context
        req.conversation = context + req.items

    def _turn(self, req: _Request) -> tuple[Turn, int]:
        """The generation this request gets, and the tokens it is charged at admission."""
        body, kind = req.body, req.kind
        counted = body if kind != "responses" or not body.get("previous_response_id") else {
            **body, "input": req.conversation}
        input_tokens = count_input_tokens(counted)
        rid = f"{_ID_PREFIX.get(kind, '')}sim{self.state.next_id():016x}"
        turn = Turn(rid=rid, model=req.model, created=int(time.time()), n=0, input_tokens=input_tokens,
                    capped=False, include_usage=_include_usage(body), continuous_usage=_continuous_usage(body))
        if kind == "embeddings":
            return turn, input_tokens
        cap, capped = requested_output(body, self.profile.default_output_tokens)
        choices = body.get("n") or 1 if kind in ("chat", "completions") else 1
        answer = self._plan(req)
        if kind == "messages" and answer.pieces is None and cap > self.profile.default_output_tokens:
            # Anthropic requires max_tokens as a ceiling: the model ends its turn at its own length
            cap, capped = self.profile.default_output_tokens, False
        turn.n, turn.capped = answer.size(cap, capped)
        turn.choices, turn.pieces, turn.call = choices, answer.pieces, answer.call
        if kind == "chat" and body.get("logprobs") is True:
            turn.top_logprobs = body.get("top_logprobs") or 0
        return turn, input_tokens + choices * (cap if capped else turn.n)

    def _plan(self, req: _Request) -> Plan:
        body, words = req.body, self.profile.default_output_tokens
        if "tools" not in body and "response_format" not in body and "text" not in body:
            return _WORDS  # nothing to call, no format: the token model's words
        if req.kind == "chat":
            last_user, after_tool = cues_from_messages(body["messages"])
            fmt = body.get("response_format")
            if fmt and fmt.get("type") == "json_schema":
                fmt = {"type": "json_schema", **fmt["json_schema"]}
            return plan(chat_functions(body), body.get("tool_choice"), fmt, last_user, after_tool, words)
        if req.kind == "responses":
            last_user, after_tool = cues_from_items(req.conversation)
            text = body.get("text") or {}
            return plan(responses_functions(body), body.get("tool_choice"), text.get("format"), last_user,
                        after_tool, words)
        if req.kind == "messages":
            last_user, after_tool = cues_from_anthropic(body["messages"])
            return plan(messages_functions(body), messages_choice(body.get("tool_choice")), None, last_user,
                        after_tool, words)
        return _WORDS

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
        headers = self._quota_headers()
        if status == 429:
            headers += retry_headers(1.0)
        await self._error(ctx, status, message, code, headers)

    async def _answer(self, ctx: _Ctx, req: _Request, turn: Turn, drop: bool, headers: Headers,
                      row: list[int]) -> None:
        renderer: Renderer
        if req.kind == "chat":
            renderer = ChatRenderer(turn)
        elif req.kind == "completions":
            renderer = CompletionRenderer(turn)
        elif req.kind == "responses":
            renderer = ResponsesRenderer(turn, response_fields(req.body))
        else:
            renderer = AnthropicRenderer(turn)
        stream = req.body.get("stream") is True
        if isinstance(renderer, ResponsesRenderer) and req.body.get("background") is True and not stream:
            await self._background_start(ctx, req, renderer, headers, row)
            return
        produce = self._stream if stream else self._unary
        sent, gone = await produce(ctx, renderer, turn.n, drop, headers)
        self.stats.output_tokens += sent * turn.choices
        row[2] += sent * turn.choices
        if gone:
            self.stats.disconnects += 1
        elif drop:
            raise SimulatedDrop(f"simulated drop after {sent} of {turn.n} tokens")
        elif isinstance(renderer, ResponsesRenderer):
            self._keep(req, renderer, renderer.final_status)

    def _keep(self, req: _Request, r: ResponsesRenderer, status: str) -> None:
        """Store a Responses answer (``store`` defaults to true) for retrieval and continuation."""
        if req.body.get("store", True) is not True:
            return
        output = r.output_items() if status in ("completed", "incomplete") else []
        self.store.put(Stored.of(r.response(status), req.items, req.conversation + output))

    async def _unary(self, ctx: _Ctx, r: Renderer, n: int, drop: bool, headers: Headers) -> tuple[int, bool]:
        """Wait the whole generation time, then answer; returns (tokens sent, client gone)."""
        delay = self._generation_s(n)
        if delay > 0 and not await ctx.watch().pause(delay):
            return 0, True
        body = r.complete()
        if not drop:
            await self._respond(ctx, 200, body, headers)
            return n, False
        await self._start(ctx, 200, JSON, headers, len(body))
        await ctx.send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        return n // 2, False

    def _generation_s(self, n: int) -> float:
        p = self.profile
        return p.first_token_s() + (n / p.tokens_per_s if p.tokens_per_s > 0 else 0.0)

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
        delay = self.profile.first_token_s()
        if delay > 0 and not await watch.pause(delay):
            return 0, True
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while i < limit:
            due = limit if tps <= 0 else min(limit, int((loop.time() - start) * tps) + 1)
            await ctx.send({"type": "http.response.body", "body": b"".join([r.token(k) for k in range(i, due)]),
                            "more_body": True})
            i = due
            if i < limit and not await watch.pause(max(start + i / tps - loop.time(), self.profile.batch_ms / 1000)):
                return i, True
        return i, False

    async def _embeddings(self, ctx: _Ctx, body: dict[str, Any], model: str, headers: Headers) -> None:
        raw = body["input"]
        texts = [x if isinstance(x, str) else str(x) for x in (raw if isinstance(raw, list) else [raw])]
        delay = self.profile.first_token_s()
        if delay > 0 and not await ctx.watch().pause(delay):
            self.stats.disconnects += 1
            return
        prompt = sum(count_text_tokens(t) for t in texts)
        vector = embedding_base64 if body.get("encoding_format") == "base64" else embedding
        out = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": vector(t)} for i, t in enumerate(texts)],
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        await self._respond(ctx, 200, orjson.dumps(out), headers)

    # --- background responses and the stored-response endpoints ---------------------------

    async def _background_start(self, ctx: _Ctx, req: _Request, r: ResponsesRenderer, headers: Headers,
                                row: list[int]) -> None:
        """``background: true``: answer at once with the queued response; generate in a task."""
        self._keep(req, r, "queued")
        rid = r.t.rid

        async def run() -> None:
            try:
                await asyncio.sleep(self._generation_s(r.t.n))
                self.stats.output_tokens += r.t.n
                row[2] += r.t.n
                self._keep(req, r, r.final_status)
            finally:
                self._background.pop(rid, None)

        self._background[rid] = asyncio.get_running_loop().create_task(run())
        await self._respond(ctx, 200, orjson.dumps(r.response("queued")), headers)

    async def _stored(self, ctx: _Ctx, method: str, parts: list[str]) -> None:
        """GET/DELETE /v1/responses/{id}, GET .../input_items, POST .../cancel."""
        op = method if len(parts) == 1 else f"{method} {parts[1]}" if len(parts) == 2 else ""
        if op not in _RESPONSE_ROUTES:
            await self._error(ctx, 404, f"Unknown request URL: {method} /v1/responses/{'/'.join(parts)}",
                              "unknown_url")
            return
        if not self._authorized(ctx):
            await self._error(ctx, 401, "Incorrect API key provided.", "invalid_api_key")
            return
        rid = parts[0]
        entry = self.store.get(rid)
        if entry is None:
            await self._error(ctx, 404, f"Response with id '{rid}' not found.", None, self._quota_headers())
            return
        if op == "GET":
            out: Any = entry.response
        elif op == "DELETE":
            self.store.delete(rid)
            task = self._background.pop(rid, None)
            if task is not None:
                task.cancel()
            out = {"id": rid, "object": "response", "deleted": True}
        elif op == "GET input_items":
            try:
                out = _page(entry.input_items, ctx.query)
            except validate.InvalidRequest as exc:
                await self._invalid(ctx, exc)
                return
        else:
            if entry.response.get("background") is not True:
                await self._error(ctx, 400, "Cannot cancel a synchronous response.", None, self._quota_headers())
                return
            task = self._background.pop(rid, None)
            if task is not None:
                task.cancel()
                entry.response = {**entry.response, "status": "cancelled"}
            out = entry.response
        await self._respond(ctx, 200, orjson.dumps(out), self._quota_headers())

    # --- listing and ops ------------------------------------------------------------------

    async def _models(self, ctx: _Ctx) -> None:
        if not self._authorized(ctx):
            await self._error(ctx, 401, "Incorrect API key provided.", "invalid_api_key")
            return
        await self._respond(ctx, 200, self._models_body)

    async def _sim_stats(self, ctx: _Ctx) -> None:
        await self._respond(ctx, 200, orjson.dumps(self.stats.snapshot()))

    async def _sim_reset(self, ctx: _Ctx) -> None:
        self.state.reset()
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


def _page(items: list[dict[str, Any]], query: bytes) -> dict[str, Any]:
    """One page of input items (``limit``, ``order``, ``after``), newest first by default."""
    params = dict(p.split("=", 1) for p in query.decode("latin-1").split("&") if "=" in p)
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise validate.InvalidRequest(f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.",
                                      "order", "invalid_value")
    try:
        limit = int(params.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise validate.InvalidRequest("Invalid 'limit': expected an integer between 1 and 100.", "limit",
                                      "invalid_value")
    ordered = items if order == "asc" else items[::-1]
    after = params.get("after")
    if after is not None:
        ids = [item["id"] for item in ordered]
        ordered = ordered[ids.index(after) + 1:] if after in ids else []
    page = ordered[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(ordered) > limit}


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
