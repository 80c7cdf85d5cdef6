"""OpenAI-shaped errors: every refusal a client sees goes through here.

Clients (the openai SDK, Codex) branch on ``error.type`` / ``error.code`` and on the
HTTP status, so the shape is part of the protocol, not cosmetics. The API layer raises
``ProxyError`` for what it finds itself (auth, body, JSON); refusals from below arrive as
``proxy.errors.Refused`` and are mapped by ``http_error``.
"""
from __future__ import annotations

import orjson

from proxy.api.ratelimit_http import client_refusal_headers, retry_headers
from proxy.errors import (
    BudgetExceeded,
    ClientLimited,
    DeploymentsLimited,
    ModelNotFound,
    Refused,
    StoreUnavailable,
    UpstreamUnavailable,
)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


class ProxyError(Exception):
    """A refusal with a status and an OpenAI error body, as the client will see it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")
        self.param = param
        self.headers = headers or {}

    def payload(self) -> dict:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def body(self) -> bytes:
        return orjson.dumps({"error": self.payload()})


def http_error(error: Refused) -> ProxyError:
    """The one place a domain refusal becomes a status, an OpenAI error body and headers."""
    if isinstance(error, ClientLimited):
        return ProxyError(429, error.message, code=error.code, headers=client_refusal_headers(error))
    if isinstance(error, DeploymentsLimited):
        wait_ms = error.retry_ms if error.retry_ms > 0 else 1000
        return ProxyError(429, error.message, code=error.code, headers=retry_headers(wait_ms))
    if isinstance(error, StoreUnavailable):
        return ProxyError(503, error.message, code=error.code, headers=retry_headers(1000))
    if isinstance(error, UpstreamUnavailable):
        return ProxyError(504 if error.timed_out else 502, error.message, code=error.code)
    if isinstance(error, BudgetExceeded):
        return ProxyError(429, error.message, code=error.code, type="insufficient_quota")
    if isinstance(error, ModelNotFound):
        return ProxyError(404, error.message, code=error.code, param=error.param)
    return ProxyError(400, error.message, code=error.code, param=error.param)  # InvalidRequest, UnsupportedEndpoint
