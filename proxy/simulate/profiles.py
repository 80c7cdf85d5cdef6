"""Named latency / rate-limit profiles for the simulated providers.

A profile captures the two things that distinguish upstream lanes for the router:
how fast tokens arrive (TTFT + decode rate) and which quotas apply (and in which
header dialect they are advertised).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DIALECTS = ("openai", "cerebras")


@dataclass(frozen=True)
class Profile:
    """Timing, quota and header dialect of one simulated upstream."""

    name: str
    ttft_ms: float
    tokens_per_s: float  # 0 = emit every token at once
    # a paced stream sleeps at least this long between writes (tokens due meanwhile go in one write);
    # 0: one write per token, as a provider streaming each token as it is generated sends them
    batch_ms: float = 10.0
    default_output_tokens: int = 16
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    dialect: str = "openai"  # "openai" | "cerebras"
    models: tuple[str, ...] = ()  # extra ids listed by GET /v1/models
    # False: no x-ratelimit-*, x-request-id or openai-processing-ms, as a self-hosted server (vLLM) answers;
    # limits are still enforced. For benchmarks that compare with the provider's full header set.
    provider_headers: bool = True

    @property
    def instant(self) -> bool:
        """True when no request ever sleeps (the benchmark fast path)."""
        return self.ttft_ms <= 0 and self.tokens_per_s <= 0

    @property
    def model_ids(self) -> tuple[str, ...]:
        return (f"sim-{self.name}", *self.models)


PROFILES: dict[str, Profile] = {
    "wafer": Profile("wafer", ttft_ms=60.0, tokens_per_s=1500.0),
    "gpu": Profile("gpu", ttft_ms=400.0, tokens_per_s=80.0),
    "instant": Profile("instant", ttft_ms=0.0, tokens_per_s=0.0),
}

_FIELDS = frozenset(f.name for f in dataclasses.fields(Profile)) - {"name"}


def get_profile(name: str, **overrides: object) -> Profile:
    """Return built-in profile `name`, with `overrides` (None values ignored) applied."""
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown simulator profile {name!r}; valid: {', '.join(sorted(PROFILES))}") from None
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - _FIELDS
    if unknown:
        raise ValueError(f"unknown profile field(s) {sorted(unknown)}; valid: {sorted(_FIELDS)}")
    profile = dataclasses.replace(base, **changes)
    if profile.dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {profile.dialect!r}; valid: {', '.join(DIALECTS)}")
    if profile.ttft_ms < 0 or profile.tokens_per_s < 0 or profile.default_output_tokens < 0 or profile.batch_ms < 0:
        raise ValueError("ttft_ms, tokens_per_s, batch_ms and default_output_tokens must be >= 0")
    return profile
