"""OpenAI-shaped errors: every refusal a client sees goes through here.

Clients (the openai SDK, Codex) branch on ``error.type`` / ``error.code`` and on the
HTTP status, so the shape is part of the protocol, not cosmetics.
"""
from __future__ import annotations

import orjson

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
    """A refusal with a status and an OpenAI error body; raised by any layer, rendered by the API layer."""

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
