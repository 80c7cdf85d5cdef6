"""What the proxy knows about one client request once the API layer has read it."""
from __future__ import annotations

from dataclasses import dataclass, field

# Endpoint name -> path below the deployment's base_url.
ENDPOINT_PATHS: dict[str, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "responses": "/responses",
    "embeddings": "/embeddings",
}
STREAMABLE = frozenset({"chat", "completions", "responses"})
_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


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
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_body(cls, endpoint: str, raw: bytes | None, body: dict, request_id: str, size: int = 0) -> "ModelRequest":
        """``size`` is needed only without ``raw``: the encoded size of ``body``, known or estimated."""
        stream = endpoint in STREAMABLE and body.get("stream") is True
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        max_out = next((body[k] for k in _MAX_TOKEN_FIELDS if isinstance(body.get(k), int)), None)
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
