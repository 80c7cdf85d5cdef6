"""The ASGI application: a dict lookup for the hot endpoints, Starlette for the rest."""
from __future__ import annotations

import logging
import os

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.api.asgi import Receive, Scope, Send, send_json
from proxy.api.openai_http import ModelEndpoint
from proxy.api.state import ProxyState
from proxy.config import load_policy
from proxy.errors import ProxyError

log = logging.getLogger("laneway")

POLICY_ENV = "LANEWAY_POLICY"


class LanewayApp:
    """Routes ``(method, path)`` of model calls straight to their handlers; anything else to Starlette."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self._fast = {
            ("POST", "/v1/chat/completions"): ModelEndpoint(state, "chat"),
            ("POST", "/v1/completions"): ModelEndpoint(state, "completions"),
            ("POST", "/v1/responses"): ModelEndpoint(state, "responses"),
            ("POST", "/v1/embeddings"): ModelEndpoint(state, "embeddings"),
            ("GET", "/v1/models"): self.models,
        }
        self._rest = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
            ],
            exception_handlers={HTTPException: _http_exception},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._fast.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
                return
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self._rest(scope, receive, send)

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route names and concrete models, in the shape the SDK's ``models.list()`` expects."""
        runtime = self.state.runtime
        owners = {name: "laneway-route" for name in runtime.policy.routes}
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": owners.get(name, "laneway")}
            for name in runtime.router.model_names()
        ]
        await send_json(send, 200, {"object": "list", "data": data})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        policy = self.state.runtime.policy
        return JSONResponse({"status": "ready", "policy": policy.source, "version": policy.version})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.state.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    error = ProxyError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}.", code="not_found" if exc.status_code == 404 else None)
    return Response(error.body(), status_code=exc.status_code, media_type="application/json")


def create_app() -> LanewayApp:
    """uvicorn factory: every worker process loads the policy named by $LANEWAY_POLICY."""
    path = os.environ.get(POLICY_ENV)
    if not path:
        raise RuntimeError(f"set {POLICY_ENV} to a policy file (laneway serve --policy FILE does this)")
    return LanewayApp(ProxyState(load_policy(path)))
