"""The ASGI application: a dict lookup for the hot endpoints, Starlette for the rest."""
from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.api.admin import PolicyStatus
from proxy.api.admin_cost import AdminCost
from proxy.api.asgi import Receive, Scope, Send, header, send_error, send_json
from proxy.api.errors import ProxyError, http_error
from proxy.api.openai_http import ModelEndpoint
from proxy.api.pipeline import Pipeline
from proxy.api.responses_ws import ResponsesSocket
from proxy.api.state import ProxyState
from proxy.api.stored_responses import StoredResponses
from proxy.config import load_policy
from proxy.config.reload import PolicyReloader
from proxy.config.schema import Policy
from proxy.errors import Refused
from proxy.metrics.service import CONTENT_TYPE, Metrics
from proxy.store.redis_store import RedisStore

log = logging.getLogger("laneway")

POLICY_ENV = "LANEWAY_POLICY"
RELOAD_INTERVAL_ENV = "LANEWAY_RELOAD_INTERVAL_S"  # how often each worker checks the policy file; 0: SIGHUP only
READY_PROBE_S = 0.5  # /readyz waits this long beyond store.timeout_ms for Redis to answer PING


class LanewayApp:
    """Routes ``(method, path)`` of model calls straight to their handlers; anything else to Starlette."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        pipeline = Pipeline(state)
        self._fast = {
            ("POST", "/v1/chat/completions"): ModelEndpoint(pipeline, "chat"),
            ("POST", "/v1/completions"): ModelEndpoint(pipeline, "completions"),
            ("POST", "/v1/responses"): ModelEndpoint(pipeline, "responses"),
            ("POST", "/v1/embeddings"): ModelEndpoint(pipeline, "embeddings"),
            ("GET", "/v1/models"): self.models,
            ("GET", "/admin/policy"): PolicyStatus(state),
        }
        self.responses_socket = ResponsesSocket(pipeline)
        self.stored_responses = StoredResponses(state)
        self.metrics = Metrics(state, state.observers, self.responses_socket.stats)
        self._fast[("GET", "/metrics")] = self.serve_metrics
        self._sampling: asyncio.Task | None = None
        self._rest = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                Route("/admin/cost", AdminCost(state)),
            ],
            exception_handlers={HTTPException: _http_exception},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._fast.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
                return
            if scope["method"] == "GET" and scope["path"].startswith("/v1/models/"):
                await self.model(scope, receive, send)
                return
            if self.stored_responses.handles(scope["path"]):
                await self.stored_responses(scope, receive, send)
                return
        elif scope["type"] == "websocket" and scope["path"] == "/v1/responses":
            await self.responses_socket(scope, receive, send)
            return
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self._rest(scope, receive, send)

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route names and concrete models, in the shape the SDK's ``models.list()`` expects."""
        runtime = self.state.runtime
        try:
            runtime.auth.check(header(scope, b"authorization"))
        except ProxyError as error:
            await send_error(send, error)
            return
        data = [_model_object(runtime.policy, name) for name in runtime.router.model_names()]
        await send_json(send, 200, {"object": "list", "data": data})

    async def model(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/models/{model}``: one route, deployment or model id (``models.retrieve()``)."""
        runtime = self.state.runtime
        name = unquote(scope["path"][len("/v1/models/"):])
        try:
            runtime.auth.check(header(scope, b"authorization"))
            runtime.router.resolve(name)
        except (ProxyError, Refused) as exc:
            await send_error(send, http_error(exc) if isinstance(exc, Refused) else exc)
            return
        await send_json(send, 200, _model_object(runtime.policy, name))

    async def serve_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Prometheus text exposition: every worker's samples when serving with --workers N."""
        body = self.metrics.render()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", CONTENT_TYPE.encode())]})
        await send({"type": "http.response.body", "body": body})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """200 while requests can be admitted: under fail_closed that needs the configured Redis."""
        policy = self.state.runtime.policy
        body: dict[str, object] = {"status": "ready", "policy": policy.source, "version": policy.version}
        settings = policy.store
        if not self.state.limiter.shared:
            body["store"] = "embedded"
            return JSONResponse(body)
        reachable = await _reachable(self.state.limiter.store, settings.timeout_ms / 1000 + READY_PROBE_S)
        body["store"] = "reachable" if reachable else "unreachable"
        if reachable or settings.on_store_error == "fail_open":  # fail_open admits on per-replica limits
            return JSONResponse(body)
        body["status"] = "unavailable"
        body["reason"] = "the rate-limit store is unreachable and store.on_store_error is fail_closed"
        return JSONResponse(body, status_code=503)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._watch_policy()
                self.state.share_statistics()
                self.state.probe_idle_lanes()
                self._sampling = asyncio.ensure_future(self.metrics.run())
                await self.state.accounting.start()
                policy = self.state.runtime.policy
                log.info("worker ready: policy %s version %s", policy.source, policy.version)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.state.reloader is not None:
                    self.state.reloader.stop()
                if self._sampling is not None:
                    self._sampling.cancel()
                await self.metrics.aclose()
                await self.state.accounting.stop()
                await self.state.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


    def _watch_policy(self) -> None:
        """Every worker reloads the policy file on change and on SIGHUP (see proxy.config.reload)."""
        policy = self.state.runtime.policy
        if self.state.reloader is None and os.path.isfile(policy.source):
            interval = float(os.environ.get(RELOAD_INTERVAL_ENV) or 0.5)
            self.state.reloader = PolicyReloader(policy, self.state.swap, interval_s=interval)
            self.state.reloader.start()


def _model_object(policy: Policy, name: str) -> dict:
    return {"id": name, "object": "model", "created": 0,
            "owned_by": "laneway-route" if name in policy.routes else "laneway"}


async def _reachable(store: RedisStore, timeout_s: float) -> bool:
    """One PING over the store's redis-py client (the request path's lean connection is left alone)."""
    try:
        await asyncio.wait_for(store.client.ping(), timeout_s)
    except Exception:  # refused, reset, timed out, cluster down: whatever it is, admission cannot use the store
        return False
    return True


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    error = ProxyError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}.", code="not_found" if exc.status_code == 404 else None)
    return Response(error.body(), status_code=exc.status_code, media_type="application/json")


def create_app() -> LanewayApp:
    """uvicorn factory: every worker process loads the policy named by $LANEWAY_POLICY."""
    path = os.environ.get(POLICY_ENV)
    if not path:
        raise RuntimeError(f"set {POLICY_ENV} to a policy file (laneway serve --policy FILE does this)")
    return LanewayApp(ProxyState(load_policy(path)))
