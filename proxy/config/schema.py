"""The policy as the proxy sees it: frozen dataclasses, no YAML.

``loader.py`` is the only place that knows the file format; everything else
imports these types. Collections are read-only (tuples / mapping proxies) so a
loaded Policy can be shared between requests and swapped atomically on reload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from .errors import FieldError

OPENAI_COMPATIBLE = frozenset({"openai", "cerebras", "groq", "together", "vllm", "openai_compatible"})
LITELLM_PROVIDERS = frozenset({"anthropic"})
PROVIDERS = OPENAI_COMPATIBLE | LITELLM_PROVIDERS
STRATEGIES = frozenset({"fallback", "latency", "cost", "weighted"})
MODALITIES = frozenset({"text", "image", "audio"})  # what a request's input may carry
WEBSOCKET_COMPRESSIONS = frozenset({"deflate", "none"})  # permessage-deflate offered on upstream sockets, or not
AUTH_MODES = frozenset({"open", "keys"})
SIMULATOR_PROFILES = frozenset({"wafer", "gpu", "instant"})
SIMULATOR_DIALECTS = frozenset({"openai", "cerebras"})
STORE_ERROR_MODES = frozenset({"fail_open", "fail_closed"})
STORE_TOPOLOGIES = frozenset({"standalone", "cluster"})


def hash_key(key: str) -> str:
    """Hex sha256 of a client API key: policy files store this, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0  # TCP connect to the upstream
    first_byte_s: float = 60.0  # request sent -> response headers
    idle_s: float = 60.0  # max gap between body chunks while streaming
    total_s: float = 600.0  # whole request


@dataclass(frozen=True, slots=True)
class Priors:
    """What the router assumes about a deployment before it has measured it (cold start)."""

    ttft_ms: float = 500.0
    tokens_per_s: float = 100.0
    concurrency: int = 8  # requests it serves in parallel before queueing adds latency


@dataclass(frozen=True, slots=True)
class Learning:
    """How fast routing forgets what it measured about a deployment, and how it rechecks a demoted one."""

    half_life_s: float = 30.0     # an old measurement's weight halves this often
    probe_interval_s: float = 3.0  # a lane demoted by its measurements gets one request this often (0: never)
    idle_probe_s: float = 10.0     # ... and, with no client request to send it, a 1-token probe this often (0: never)


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Circuit breaker: open after `failures` consecutive failures, probe again after `cooldown_s`."""

    failures: int = 5
    cooldown_s: float = 30.0
    half_open_probes: int = 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate limits of one scope (a deployment: what the provider grants us; a key: what we grant it)."""

    rpm: int | None = None  # requests per minute (sliding window)
    tpm: int | None = None  # tokens per minute (input + output)
    rpd: int | None = None  # requests per day
    tpd: int | None = None  # tokens per day
    concurrency: int | None = None  # requests in flight
    reserve_output_tokens: int = 1024  # reserved for a request that names no max output tokens


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    provider: str  # one of OPENAI_COMPATIBLE | LITELLM_PROVIDERS
    model: str  # the upstream model id
    base_url: str  # scheme://host[:port][/path], trailing "/" stripped
    hardware: str = "gpu"  # free tag; "wafer" and "gpu" are the documented lanes
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)  # resolved at load time; never printed
    timeouts: Timeouts = Timeouts()
    headers: Mapping[str, str] = field(default_factory=dict)  # extra upstream headers, already interpolated
    ca_file: str | None = None  # PEM CA bundle trusted for its TLS instead of the system store
    priors: Priors = Priors()
    learning: Learning = Learning()
    breaker: BreakerSettings = BreakerSettings()
    context_window: int | None = None  # tokens in + out it accepts; None: not checked
    modalities: tuple[str, ...] | None = None  # input it takes (MODALITIES); None: anything
    reasoning: bool = False  # reasons deeply: preferred for requests asking reasoning effort "high"
    websocket: bool = False  # the provider speaks Responses WebSocket mode: run turns over pooled sockets
    websocket_max_connections: int = 8  # sockets Laneway may hold open to it (the provider's cap)
    # offer permessage-deflate on its sockets: a turn resends instructions + tools, which the
    # compressor's window still holds (docs/websocket.md has the bytes and CPU it costs)
    websocket_compression: str = "deflate"
    limits: Limits | None = None

    @property
    def openai_compatible(self) -> bool:
        """True when requests can be relayed as-is; False means translate through LiteLLM."""
        return self.provider in OPENAI_COMPATIBLE


@dataclass(frozen=True, slots=True)
class Slo:
    """A route's latency objective; the router prefers candidates predicted to meet it at `percentile`."""

    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    total_ms: float | None = None
    percentile: float = 95.0


@dataclass(frozen=True, slots=True)
class Hedge:
    """No first token from the chosen candidate after `after_ms`: start the next one too."""

    after_ms: float


@dataclass(frozen=True, slots=True)
class Spill:
    """Move a candidate behind the others while its provider-reported quota is this close to empty."""

    min_requests: int = 1  # spill when fewer requests than this remain in the provider's window
    min_tokens: int = 0    # ... or fewer tokens than this request's estimate plus this margin
    # Below this share of the provider's window left, keep the rest for requests that gain at
    # least reserve_min_gain_ms by using this lane rather than the next (0 = never reserve).
    reserve_fraction: float = 0.0
    reserve_min_gain_ms: float = 0.0
    # Raise that bar to what the lane's recent demand needs for it to fit the quota (routing/reserve.py).
    reserve_pace: bool = False
    # Keep below the bar only what the requests above it are expected to need (routing/reserve.py).
    reserve_sized: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    candidates: tuple[str, ...]  # deployment names, in preference order
    strategy: str = "fallback"  # one of STRATEGIES
    slo: Slo | None = None
    weights: Mapping[str, float] = field(default_factory=dict)  # `weighted`: deployment -> share
    hedge: Hedge | None = None
    spill: Spill = Spill()


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str  # label used in logs/metrics (never the key)
    sha256: str  # lowercase hex sha256 of the full key string, see hash_key()
    team: str | None = None
    admin: bool = False  # may read GET /admin/cost
    budget: "Budget | None" = None
    limits: Limits | None = None


@dataclass(frozen=True, slots=True)
class Simulator:
    name: str
    profile: str  # one of SIMULATOR_PROFILES
    port: int
    host: str = "127.0.0.1"
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    dialect: str = "openai"  # one of SIMULATOR_DIALECTS


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """Client-facing Responses WebSocket mode on GET /v1/responses."""

    enabled: bool = True  # false: the upgrade gets 426 and clients fall back to HTTP
    max_connection_minutes: float = 60.0  # then `websocket_connection_limit_reached`; clients reconnect
    idle_timeout_s: float = 600.0  # close a socket with no turn in flight for this long


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Quota leases: a replica borrows a slice of each scope's windows and concurrency in one Redis
    call and admits locally until it is spent (docs/limits.md); off unless the policy sets them."""

    requests: int = 256  # at most this many requests per lease (it grows from 1 with the demand it sees)
    duration_ms: int = 1000  # an unused lease goes back after this long (at most 1000)
    share: float = 0.1  # at most this share of any one limit per lease, so other replicas keep the rest


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where rate-limit state lives: Redis shared by every replica, or in-process when no URL is set."""

    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    topology: str = "standalone"  # one of STORE_TOPOLOGIES
    on_store_error: str = "fail_open"  # one of STORE_ERROR_MODES
    replicas: int = 1  # fail-open divides every limit by this many replicas
    timeout_ms: int = 50  # bound on one Redis call, connect included
    lease_s: float = 30.0  # a concurrency slot of a crashed replica frees after this long
    max_connections: int = 64  # per Redis node per worker; more concurrent calls wait for a free one
    leases: LeaseSettings | None = None  # quota leases (shared store only)
    sqlite_path: str | None = None  # without Redis: the ledger's file (default $LANEWAY_STATE_DIR or ./.laneway)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    max_body_bytes: int = 10 * 1024 * 1024
    websocket: WebSocketSettings = WebSocketSettings()
    # The edge of each worker: what a slow or hostile client may hold (proxy/api/http_server.py).
    header_timeout_s: float = 10.0  # a connection's first byte (or a request's) -> its last header line
    body_timeout_s: float = 60.0  # headers complete -> the whole body, however it trickles in
    keep_alive_s: float = 75.0  # an idle keep-alive connection is closed after this long
    max_connections: int = 4096  # open client connections (HTTP and WebSocket) per worker; more get 503
    max_header_bytes: int = 64 * 1024  # request line + headers; more get 431
    # A streamed answer from a pooled HTTP upstream is read at most once per this many ms after its
    # first chunk: tokens paced one by one go out a few at a time, for less CPU per token. 0: each as it comes.
    stream_batch_ms: float = 0.0


PRICE_STATUSES = frozenset({"announced", "provisional", "free_preview"})


@dataclass(frozen=True, slots=True)
class PricePoint:
    """One entry of a model's price schedule: USD per million tokens from ``effective_from`` (UTC) on.

    Decimal, not float: re-pricing history must agree with an invoice to the cent.
    """

    effective_from: datetime  # timezone-aware, UTC
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None  # None: cached input tokens cost the input price
    reasoning_per_mtok: Decimal | None = None  # None: reasoning tokens cost the output price
    status: str = "announced"  # one of PRICE_STATUSES
    source: str = ""  # where the number comes from (price page, email, "guess from GPU lane")


@dataclass(frozen=True, slots=True)
class Budget:
    """USD spend limits for a key or a team: soft prefers cheaper candidates, hard refuses with 429."""

    daily_soft_usd: Decimal | None = None
    daily_hard_usd: Decimal | None = None
    monthly_soft_usd: Decimal | None = None
    monthly_hard_usd: Decimal | None = None


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """Where token usage is recorded: Redis when a URL is set (shared by replicas), else a local SQLite file."""

    redis_url: str | None = field(default=None, repr=False)  # may hold a password; None: store.redis_url, else SQLite
    flush_interval_s: float = 1.0  # usage is written in one pipelined batch this often
    max_buffered: int = 100_000  # distinct (hour, deployment, model, key, team) rows held while Redis is down
    retention_days: int = 400


@dataclass(frozen=True, slots=True)
class Policy:
    source: str  # file path (or "<string>")
    version: str  # first 12 hex chars of sha256 of the file bytes: shows which policy served a request
    server: ServerSettings
    auth: str  # "open" (no key needed; demo) | "keys"
    keys: tuple[ApiKey, ...]
    deployments: Mapping[str, Deployment]  # by name, in file order
    routes: Mapping[str, Route]  # by name, in file order
    simulators: tuple[Simulator, ...] = ()
    warnings: tuple[FieldError, ...] = ()
    prices: Mapping[str, tuple[PricePoint, ...]] = field(default_factory=dict)  # model -> schedule, oldest first
    team_budgets: Mapping[str, Budget] = field(default_factory=dict)
    ledger: LedgerSettings = LedgerSettings()
    store: StoreSettings = StoreSettings()
