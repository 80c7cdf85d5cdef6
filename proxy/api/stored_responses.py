"""Responses the provider stores, reached through Laneway: retrieve, delete, input items, cancel.

``GET|DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` and
``POST /v1/responses/{id}/cancel`` go to the deployment that produced the response (the
affinity map, see ``proxy.store.affinity``), exactly as the provider answers them.
"""
from __future__ import annotations

import re

from proxy.api.asgi import Receive, Scope, Send, header, request_id, send_bytes, send_error
from proxy.api.errors import ProxyError, http_error
from proxy.api.state import ProxyState
from proxy.call import UpstreamError
from proxy.errors import Refused
from proxy.routing.failures import no_upstream_error

_PATH = re.compile(r"/v1/responses/([A-Za-z0-9_\-]{1,200})(/input_items|/cancel)?")
_METHODS = {None: ("GET", "DELETE"), "/input_items": ("GET",), "/cancel": ("POST",)}
_QUERY = re.compile(rb"[A-Za-z0-9_\-.=&%\[\]]*")  # what input_items' after/limit/order/include[] need


class StoredResponses:
    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def handles(self, path: str) -> bool:
        return path.startswith("/v1/responses/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(scope)
        runtime = self.state.runtime
        try:
            runtime.auth.check(header(scope, b"authorization"))
            response_id, tail, query = self._parse(scope)
            owner = await self.state.affinity.owner(response_id)
            if owner is None or owner not in runtime.router.targets:
                raise ProxyError(404, f"Response '{response_id}' is not known to this proxy: it was not created "
                                 "through it, or it has expired.", code="response_not_found", param="response_id")
            path = f"/responses/{response_id}{tail or ''}" + (f"?{query.decode()}" if query else "")
            try:
                response = await runtime.router.targets[owner].forward(scope["method"], path, rid)
            except UpstreamError as exc:
                raise no_upstream_error(exc, [f"{owner}={exc.kind}"], holder=f"The deployment that holds {response_id} ({owner})") from None
            body = await response.read()
        except (ProxyError, Refused) as exc:
            await send_error(send, http_error(exc) if isinstance(exc, Refused) else exc, rid)
            return
        except UpstreamError as exc:
            await send_error(send, ProxyError(502, f"The upstream broke off its answer ({exc.kind}).", code="upstream_error"), rid)
            return
        content_type = next((v for k, v in response.headers if k == b"content-type"), b"application/json")
        headers = [(b"x-request-id", rid.encode()), (b"x-laneway-deployment", owner.encode())]
        await send_bytes(send, response.status, body, headers, content_type=content_type)

    @staticmethod
    def _parse(scope: Scope) -> tuple[str, str | None, bytes]:
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            raise ProxyError(404, f"{scope['method']} {scope['path'][:200]}: not found.", code="not_found")
        response_id, tail = match.group(1), match.group(2)
        if scope["method"] not in _METHODS[tail]:
            raise ProxyError(405, f"{scope['method']} is not allowed on {scope['path'][:200]}.", code="method_not_allowed")
        query = scope.get("query_string", b"")
        if not _QUERY.fullmatch(query):
            raise ProxyError(400, "The query string has characters this endpoint does not take.", code="invalid_query")
        return response_id, tail, query
