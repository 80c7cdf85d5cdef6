"""Remaining quota of one deployment, as the router reads it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Headroom:
    """Quota left on one deployment and when it refills; ``None`` means unknown.

    Times are ``time.monotonic()``. Both the limiter (ours and the provider's word) and the
    router's header-learned view describe headroom with this one type.
    """

    requests: float | None = None
    tokens: float | None = None
    requests_limit: float | None = None
    tokens_limit: float | None = None
    requests_reset_at: float = 0.0
    tokens_reset_at: float = 0.0
    exhausted_until: float = 0.0     # an upstream 429 said so

    def fraction_left(self, now: float) -> float:
        """The smaller of requests / tokens left as a share of the window's limit (1.0 when unknown)."""
        if now < self.exhausted_until:
            return 0.0
        share = 1.0
        if self.requests is not None and self.requests_limit and now < self.requests_reset_at:
            share = min(share, self.requests / self.requests_limit)
        if self.tokens is not None and self.tokens_limit and now < self.tokens_reset_at:
            share = min(share, self.tokens / self.tokens_limit)
        return max(0.0, share)

    def short(self, need_tokens: int, min_requests: int, min_tokens: int, now: float) -> str | None:
        """Why this deployment should be spilled from now ("requests" / "tokens"), or None."""
        if now < self.exhausted_until:
            return "requests"
        if self.requests is not None and now < self.requests_reset_at and self.requests < min_requests:
            return "requests"
        if self.tokens is not None and now < self.tokens_reset_at and self.tokens < need_tokens + min_tokens:
            return "tokens"
        return None
