"""Named latency / rate-limit profiles for the simulated providers.

A profile captures the two things that distinguish upstream lanes for the router:
how fast tokens arrive (TTFT + decode rate) and which quotas apply (and in which
header dialect they are advertised). It also carries the provider's per-request
overhead model: what a fresh request costs before prefill, and how much of that and of
the TTFT a WebSocket turn continuing its connection's last response is spared — the
providers' reason for WebSocket mode, which a benchmark over a WAN must reproduce to ask
whether a proxy keeps the gain (docs/simulator.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

DIALECTS = ("openai", "cerebras")

# The providers' published claims for a WebSocket continuation versus a fresh HTTP request with
# the full context: -80% of the per-round-trip overhead, -50% time to first token.
PUBLISHED_CONTINUED_OVERHEAD_SHARE = 0.2
PUBLISHED_CONTINUED_TTFT_SHARE = 0.5


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
    # Provider work per fresh request before prefill (authentication, loading state, scheduling);
    # off (0) in the classic profiles so what tests and benches measured stays as it was.
    request_overhead_ms: float = 0.0
    continued_overhead_share: float = 1.0  # of request_overhead_ms, paid by a continued socket turn
    continued_ttft_share: float = 1.0  # of ttft_ms, waited by a continued socket turn
    # False: no x-ratelimit-*, x-request-id or openai-processing-ms, as a self-hosted server (vLLM) answers;
    # limits are still enforced. For benchmarks that compare with the provider's full header set.
    provider_headers: bool = True

    @property
    def instant(self) -> bool:
        """True when no request ever sleeps (the benchmark fast path)."""
        return self.ttft_ms <= 0 and self.tokens_per_s <= 0 and self.request_overhead_ms <= 0

    def first_token_s(self, continued: bool = False) -> float:
        """Seconds from a request's arrival to its first token: overhead + TTFT. ``continued``: a
        WebSocket turn naming its connection's last response, whose state the provider holds in
        memory, so it pays only the continued shares of both. A full-context socket turn is fresh."""
        if continued:
            return (self.request_overhead_ms * self.continued_overhead_share
                    + self.ttft_ms * self.continued_ttft_share) / 1000
        return (self.request_overhead_ms + self.ttft_ms) / 1000

    @property
    def model_ids(self) -> tuple[str, ...]:
        return (f"sim-{self.name}", *self.models)


PROFILES: dict[str, Profile] = {
    "wafer": Profile("wafer", ttft_ms=60.0, tokens_per_s=1500.0),
    "gpu": Profile("gpu", ttft_ms=400.0, tokens_per_s=80.0),
    "instant": Profile("instant", ttft_ms=0.0, tokens_per_s=0.0),
    # wafer speed with the overhead model on: 50 ms of provider work per fresh request (an assumed
    # figure, --request-overhead-ms changes it) and the published shares for continued socket turns
    "agent": Profile("agent", ttft_ms=60.0, tokens_per_s=1500.0, request_overhead_ms=50.0,
                     continued_overhead_share=PUBLISHED_CONTINUED_OVERHEAD_SHARE,
                     continued_ttft_share=PUBLISHED_CONTINUED_TTFT_SHARE),
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
    if not 0 <= profile.request_overhead_ms < math.inf:
        raise ValueError("request_overhead_ms must be a finite number >= 0")
    if not (0 <= profile.continued_overhead_share <= 1 and 0 <= profile.continued_ttft_share <= 1):
        raise ValueError("continued_overhead_share and continued_ttft_share must be within 0..1")
    return profile
