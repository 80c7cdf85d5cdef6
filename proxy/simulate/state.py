"""What one simulated provider keeps between requests, shared by its HTTP and WebSocket sides:
counters, queued faults, quotas, stored responses and the id sequence."""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

from .profiles import Profile
from .ratelimit import RateLimiter
from .store import ResponseStore

Fault = tuple[str, float]  # (mode, argument: HTTP status or milliseconds)
_ERROR_STATUSES = (400, 429, 500, 503)


def parse_fault(spec: str) -> Fault:
    """Parse a fault mode: 400, 429, 500, 503, hang, drop_mid_stream or slow_first_byte:<ms>."""
    spec = spec.strip()
    if spec.isdigit() and int(spec) in _ERROR_STATUSES:
        return "error", float(spec)
    if spec in ("hang", "drop_mid_stream"):
        return spec, 0.0
    head, _, arg = spec.partition(":")
    if head == "slow_first_byte":
        try:
            ms = float(arg)
        except ValueError:
            ms = -1.0
        if ms >= 0:
            return head, ms
    raise ValueError(f"unknown fault {spec!r}; valid: 400, 429, 500, 503, hang, drop_mid_stream, slow_first_byte:<ms>")


class Stats:
    """Counters served by GET /sim/stats. `requests` counts every authorised, parseable model
    request (faulted and rate-limited ones included);
    `input_tokens` only admitted ones; `output_tokens` only tokens actually sent."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = self.input_tokens = self.output_tokens = 0
        self.disconnects = self.rate_limited = self.faults = 0
        self.by_model: dict[str, list[int]] = {}  # model -> [requests, input_tokens, output_tokens]

    def model(self, name: str) -> list[int]:
        row = self.by_model.get(name)
        if row is None:
            row = self.by_model[name] = [0, 0, 0]
        return row

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "disconnects": self.disconnects,
            "rate_limited": self.rate_limited,
            "faults": self.faults,
            "by_model": {
                m: {"requests": r, "input_tokens": i, "output_tokens": o}
                for m, (r, i, o) in list(self.by_model.items())
            },
        }


class ProviderState:
    """The provider behind both transports; ``key`` None accepts any key."""

    def __init__(self, profile: Profile, key: bytes | None) -> None:
        self.profile = profile
        self.key = key
        self.stats = Stats()
        self.limiter = RateLimiter(profile)
        self.faults: deque[Fault] = deque()
        self.store = ResponseStore()
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def reset(self) -> None:
        self.stats.reset()
        self.limiter.reset()
        self.faults.clear()
        self.store.clear()
