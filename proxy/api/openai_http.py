"""OpenAI-compatible model endpoints over HTTP: parse a little, route, relay bytes.

The request body is parsed once (orjson) for the fields routing needs and forwarded as
received; the response is relayed chunk by chunk as the upstream sends it, scanned for
the first token and the usage object on the way.
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson

from proxy.api.asgi import Receive, Scope, Send, header, read_body, request_id, send_bytes, send_error
from proxy.api.state import ProxyState, Runtime
from proxy.errors import ProxyError
from proxy.limits.limiter import CURRENT_TICKET
from proxy.pricing.budgets import admit_route
from proxy.routing.hints import NO_HINTS, Hints
from proxy.routing.router import Attempt
from proxy.upstream.http_pool import UpstreamError
from proxy.upstream.request import ModelRequest, Outcome
from proxy.upstream.scan import StreamScanner, Usage, UsageChunkFilter, extract_usage

log = logging.getLogger("laneway")

# Upstream response headers a client may rely on; provider rate-limit headers are ours, not theirs.
_RELAYED = frozenset({b"content-type", b"retry-after", b"retry-after-ms", b"x-should-retry"})


class ModelEndpoint:
    """ASGI handler for one of /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings."""

    def __init__(self, state: ProxyState, endpoint: str) -> None:
        self.state = state
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        rid = request_id(scope)
        runtime = self.state.runtime
        outcome = Outcome(rid, self.endpoint, route="", key_name="", team=None, started=started)
        try:
            key = runtime.auth.check(header(scope, b"authorization"))
            outcome.key_name, outcome.team = key.name, key.team
            raw = await read_body(receive, scope, runtime.policy.server.max_body_bytes)
            req = self._parse(raw, rid)
            attempt = await route_request(runtime, req, outcome, read_hints(scope))
        except ProxyError as error:
            outcome.status, outcome.error_code = error.status, error.code
            outcome.finished = time.perf_counter()
            await send_error(send, error, rid)
            self.state.finish(outcome)
            return
        for lost in attempt.losers:  # hedged attempts that lost the race consumed something too
            self.state.finish(lost.outcome(outcome))
        headers = _response_headers(attempt, rid)
        if runtime.limiter is not None:
            headers += runtime.limiter.response_headers(outcome)  # the client's own x-ratelimit-*
        try:
            if req.stream and attempt.response.status == 200:
                await self._relay_stream(attempt, req, outcome, headers, receive, send)
            else:
                await self._relay_whole(attempt, req, outcome, headers, send)
        finally:
            outcome.finished = time.perf_counter()
            self.state.finish(outcome)

    def _parse(self, raw: bytes, rid: str) -> ModelRequest:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProxyError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ProxyError(400, "The request body must be a JSON object.", code="invalid_json")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ProxyError(400, "'model' is required: a route name or a model listed by GET /v1/models.", code="missing_model", param="model")
        return ModelRequest.from_body(self.endpoint, raw, body, rid)

    async def _relay_whole(self, attempt: Attempt, req: ModelRequest, outcome: Outcome, headers: list, send: Send) -> None:
        try:
            body = await attempt.response.read()
        except UpstreamError as exc:
            error = ProxyError(502, f"The upstream broke off its response ({exc.kind}). Retry the request.", code="upstream_error")
            outcome.status, outcome.error_code = error.status, error.code
            await send_error(send, error, req.request_id)
            return
        if attempt.response.status == 200:
            take_usage(outcome, extract_usage(body) or Usage(input_tokens=req.input_estimate, reported=False))
        await send_bytes(send, attempt.response.status, body, headers, content_type=_content_type(attempt))

    async def _relay_stream(self, attempt: Attempt, req: ModelRequest, outcome: Outcome, headers: list, receive: Receive, send: Send) -> None:
        response = attempt.response
        scanner = StreamScanner(outcome.started)
        usage_filter = UsageChunkFilter() if attempt.injected_usage else None
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", _content_type(attempt)), *headers]})
        relay = asyncio.current_task()
        state = {"done": False, "gone": False}

        def on_client_message(fut: asyncio.Future) -> None:
            if fut.cancelled() or fut.exception() is not None or state["done"]:
                return
            if fut.result().get("type") == "http.disconnect":
                state["gone"] = True
                relay.cancel()

        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(on_client_message)
        try:
            async for chunk in response.iter_body():
                scanner.feed(chunk)
                out = usage_filter.feed(chunk) if usage_filter else chunk
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            tail = usage_filter.flush() if usage_filter else b""
            state["done"] = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            relay.uncancel()
            outcome.status, outcome.error_code = 499, "client_disconnected"
            abandon = getattr(response, "abandon", None)  # pass-through responses: count what already arrived
            if abandon is not None:
                scanner.feed(abandon())
        except UpstreamError as exc:
            state["done"] = True
            outcome.status, outcome.error_code = 502, "upstream_stream_error"
            await send({"type": "http.response.body", "body": _stream_error(req.endpoint, exc), "more_body": False})
        finally:
            state["done"] = True
            watcher.cancel()
            outcome.first_token_at = scanner.first_token_at
            take_usage(outcome, scanner.usage_or_estimate(req.input_estimate))


async def route_request(runtime: Runtime, req: ModelRequest, outcome: Outcome, hints: Hints = NO_HINTS) -> Attempt:
    """Resolve and dispatch one parsed request, noting on ``outcome`` where it went.

    Every model call takes this path — an HTTP request or a WebSocket turn — so routing,
    limits and accounting treat both transports alike. Raises ProxyError on refusal.
    """
    route = runtime.router.resolve(req.model)
    outcome.route, outcome.stream = route.name, req.stream
    limiter = runtime.limiter
    ticket = limiter.ticket(outcome.key_name, req.input_estimate, req.max_output_tokens) if limiter is not None else None
    if ticket is not None:
        limiter.bind(outcome, ticket)  # settled by ProxyState.finish(outcome), however the request ends
    CURRENT_TICKET.set(ticket)  # the router admits each candidate against it
    budgets = runtime.budgets
    if budgets is not None and budgets.applies(outcome.key_name, outcome.team):
        route, soft = await admit_route(budgets, route, req, outcome)  # reserves its cost; 429 over a hard limit
        attempt = await runtime.router.dispatch(route, req, hints)
        if soft:
            attempt.reason = "budget_soft:cheapest_first," + attempt.reason
    else:
        attempt = await runtime.router.dispatch(route, req, hints)
    dep = attempt.deployment
    outcome.deployment, outcome.hardware, outcome.reason = dep.name, dep.hardware, attempt.reason
    outcome.upstream_started = attempt.sent_at
    outcome.status = attempt.response.status
    return attempt


def read_hints(scope: Scope) -> Hints:
    """The client's x-laneway-* routing hints; one pass over the headers, nothing built when there are none."""
    lane = max_latency = max_cost = None
    for name, value in scope["headers"]:
        if name.startswith(b"x-laneway-"):
            if name == b"x-laneway-lane":
                lane = value
            elif name == b"x-laneway-max-latency-ms":
                max_latency = value
            elif name == b"x-laneway-max-cost-usd":
                max_cost = value
    if lane is None and max_latency is None and max_cost is None:
        return NO_HINTS
    return Hints.parse(lane, max_latency, max_cost)


def take_usage(outcome: Outcome, usage: Usage) -> None:
    outcome.input_tokens = usage.input_tokens
    outcome.output_tokens = usage.output_tokens
    outcome.cached_tokens = usage.cached_tokens
    outcome.reasoning_tokens = usage.reasoning_tokens
    outcome.usage_reported = usage.reported


def _content_type(attempt: Attempt) -> bytes:
    for name, value in attempt.response.headers:
        if name == b"content-type":
            return value
    return b"application/json"


def _response_headers(attempt: Attempt, rid: str) -> list[tuple[bytes, bytes]]:
    dep = attempt.deployment
    headers = [(name, value) for name, value in attempt.response.headers if name in _RELAYED and name != b"content-type"]
    headers += [
        (b"x-request-id", rid.encode()),
        (b"x-laneway-deployment", dep.name.encode()),
        (b"x-laneway-lane", dep.hardware.encode()),
        (b"x-laneway-route-reason", attempt.reason.encode()),
    ]
    return headers


def _stream_error(endpoint: str, exc: UpstreamError) -> bytes:
    """An in-band error event: the SDKs raise on any SSE payload carrying an ``error`` key."""
    error = {
        "message": f"The upstream stream broke off ({exc.kind}); the response is incomplete.",
        "type": "server_error",
        "param": None,
        "code": "upstream_stream_error",
    }
    if endpoint == "responses":
        return b"event: error\ndata: " + orjson.dumps({"type": "error", **error, "error": error}) + b"\n\n"
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
