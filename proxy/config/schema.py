"""The policy as the proxy sees it: frozen dataclasses, no YAML.

``loader.py`` is the only place that knows the file format; everything else
imports these types. Collections are read-only (tuples / mapping proxies) so a
loaded Policy can be shared between requests and swapped atomically on reload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import FieldError

OPENAI_COMPATIBLE = frozenset({"openai", "cerebras", "groq", "together", "vllm", "openai_compatible"})
LITELLM_PROVIDERS = frozenset({"anthropic"})
PROVIDERS = OPENAI_COMPATIBLE | LITELLM_PROVIDERS
STRATEGIES = frozenset({"fallback"})
AUTH_MODES = frozenset({"open", "keys"})
SIMULATOR_PROFILES = frozenset({"wafer", "gpu", "instant"})
SIMULATOR_DIALECTS = frozenset({"openai", "cerebras"})


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

    @property
    def openai_compatible(self) -> bool:
        """True when requests can be relayed as-is; False means translate through LiteLLM."""
        return self.provider in OPENAI_COMPATIBLE


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    candidates: tuple[str, ...]  # deployment names, in preference order
    strategy: str = "fallback"  # one of STRATEGIES


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str  # label used in logs/metrics (never the key)
    sha256: str  # lowercase hex sha256 of the full key string, see hash_key()
    team: str | None = None


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
class ServerSettings:
    max_body_bytes: int = 10 * 1024 * 1024


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
