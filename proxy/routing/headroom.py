"""How much quota each deployment has left, as far as this process can tell.

When the rate limiter is not active, the best source is the provider itself: responses
carry ``x-ratelimit-remaining-*`` headers (OpenAI style: ``-requests`` / ``-tokens`` with Go
duration resets like ``6m0s``; Cerebras style: ``-requests-day`` / ``-tokens-minute`` with
resets in float seconds; Anthropic's ``anthropic-ratelimit-*``), read by the limiter's
``parse_headers``. Between responses the view is debited locally for every request
sent, so a burst does not all see the same stale "remaining" figure. A 429 empties the view
until its ``retry-after``.

Any object with ``headroom(deployment_name) -> Headroom | None`` can replace this one (the
limiter's view when it is active, see ProxyState): the router only calls that method.
"""
from __future__ import annotations

import time
from typing import Protocol

from proxy.limits.headroom import Headroom
from proxy.limits.provider_headers import parse_headers


class HeadroomView(Protocol):
    def headroom(self, deployment: str) -> Headroom | None: ...


class ProviderHeadroom:
    """Headroom learned from provider response headers, debited locally between responses."""

    def __init__(self) -> None:
        self._by_name: dict[str, Headroom] = {}

    def headroom(self, deployment: str) -> Headroom | None:
        return self._by_name.get(deployment)

    def debit(self, deployment: str, tokens: int) -> None:
        """A request was sent: count it against what the provider last reported."""
        room = self._by_name.get(deployment)
        if room is None:
            return
        if room.requests is not None:
            room.requests -= 1
        if room.tokens is not None:
            room.tokens -= tokens

    def learn(self, deployment: str, status: int, headers: list[tuple[bytes, bytes]], now: float | None = None) -> None:
        """Update from one response's headers (parsed by the limiter's reader: every dialect it knows)."""
        report = parse_headers(headers, time.time())
        if not report and status != 429:
            return
        now = time.monotonic() if now is None else now
        room = self._by_name.setdefault(deployment, Headroom())
        seen: set[str] = set()
        for window in report.windows:  # several windows of a kind (per minute, per day): keep the tightest
            if window.remaining is None:
                continue
            kind = window.kind
            reset_at = now + (window.reset_s or 0.0)
            if kind == "requests" and ("requests" not in seen or window.remaining < room.requests):
                room.requests, room.requests_limit, room.requests_reset_at = window.remaining, window.limit, reset_at
            elif kind == "tokens" and ("tokens" not in seen or window.remaining < room.tokens):
                room.tokens, room.tokens_limit, room.tokens_reset_at = window.remaining, window.limit, reset_at
            seen.add(kind)
        if status == 429:
            wait = report.retry_after_s if report.retry_after_s is not None else 1.0
            room.requests = 0
            room.requests_reset_at = max(room.requests_reset_at, now + wait)
