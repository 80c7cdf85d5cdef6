"""The call vocabulary: what every layer says about one model call.

A parsed request, how it ended, the token usage it reported, the ways an upstream exchange
fails and the response protocol every upstream client returns. It sits at the bottom of the
package (it imports nothing of Laneway's), so routing, limits, pricing, metrics and the
upstream clients share these types without importing each other.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

# Endpoint name -> path below the deployment's base_url.
ENDPOINT_PATHS: dict[str, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "responses": "/responses",
    "embeddings": "/embeddings",
}
STREAMABLE = frozenset({"chat", "completions", "responses"})
_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
# Output tokens reserved (rate limits, budgets) for a request that sets no max tokens.
DEFAULT_OUTPUT_TOKENS = 1024


@dataclass(slots=True)
class ModelRequest:
    """A parsed client request: the raw bytes to forward plus the few fields routing needs."""

    endpoint: str                 # a key of ENDPOINT_PATHS
    raw: bytes | None             # the body exactly as the client sent it; None for a WebSocket turn,
                                  # which has no such bytes (it is encoded for the upstream it lands on)
    body: dict                    # parsed once; read-only
    model: str
    stream: bool
    request_id: str
    size: int                     # bytes of the whole body, sent or not: the prompt-size estimate
    client_wants_usage: bool = False
    max_output_tokens: int | None = None

    @classmethod
    def from_body(cls, endpoint: str, raw: bytes | None, body: dict, request_id: str, size: int = 0) -> "ModelRequest":
        """``size`` is needed only without ``raw``: the encoded size of ``body``, known or estimated.

        ``body`` has been validated by the API layer: token limits are positive ints when present.
        """
        stream = endpoint in STREAMABLE and body.get("stream") is True
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        max_out = next((body[k] for k in _MAX_TOKEN_FIELDS if type(body.get(k)) is int), None)
        size = len(raw) if raw is not None else size
        return cls(endpoint, raw, body, body["model"], stream, request_id, size, wants_usage, max_out)

    @property
    def input_estimate(self) -> int:
        """Prompt tokens estimated from the body size (~4 bytes a token): cheap and never low by much."""
        return max(1, self.size // 4)


@dataclass(slots=True)
class Outcome:
    """How one request ended: what accounting, metrics and the access log need."""

    request_id: str
    endpoint: str
    route: str
    key_name: str
    team: str | None
    transport: str = "http"              # "http" | "websocket"
    deployment: str | None = None
    hardware: str | None = None
    reason: str = ""
    status: int = 0                      # 499: the client went away mid-response
    stream: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    usage_reported: bool = False
    started: float = 0.0                 # perf_counter at arrival
    upstream_started: float = 0.0        # perf_counter when routing handed over to the upstream
    first_token_at: float | None = None
    finished: float = 0.0
    error_code: str | None = None

    def take_usage(self, usage: "Usage") -> None:
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.cached_tokens = usage.cached_tokens
        self.reasoning_tokens = usage.reasoning_tokens
        self.usage_reported = usage.reported


@dataclass(slots=True)
class Usage:
    """Token counts in one vocabulary for every API (chat, completions, responses, embeddings)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    reported: bool = True  # False: estimated by the proxy because the upstream never said

    @classmethod
    def from_openai(cls, usage: dict) -> "Usage":
        inp = usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0
        out = usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0
        in_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        out_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
        return cls(  # a negative count from a buggy upstream must not become credit
            input_tokens=max(0, int(inp)),
            output_tokens=max(0, int(out)),
            cached_tokens=max(0, int(in_details.get("cached_tokens") or 0)),
            reasoning_tokens=max(0, int(out_details.get("reasoning_tokens") or 0)),
        )


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange; ``kind`` says how."""

    kind = "protocol"


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamClosed(UpstreamError):
    """The connection ended before the response did (a mid-stream drop)."""

    kind = "closed"


class UpstreamResponse(Protocol):
    """What every upstream client hands back: status and headers first, then the body."""

    status: int
    headers: list[tuple[bytes, bytes]]

    def iter_body(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamError when the exchange breaks off."""

    async def read(self) -> bytes:
        """The whole body."""

    def release(self) -> None:
        """Done with it: a whole response returns its connection, a partial one aborts it."""

    def abandon(self) -> bytes:
        """Stop mid-body: abort the upstream exchange and return the bytes that had arrived
        but were not yet read (they may carry usage), so what was consumed is billed."""
