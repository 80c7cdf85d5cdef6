"""Per-process sliding-window quotas with OpenAI- or Cerebras-style headers.

Tokens are charged at admission (input + requested output), like Cerebras,
so a request that would overflow the window is refused before any work.

A real provider always has limits and always says so: every answer carries its
dialect's six headers. OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
(per minute, resets as Go durations like ``6m0s``, ``12ms``). Cerebras:
``-requests-day`` and ``-tokens-minute`` (resets in float seconds). A limit the
profile leaves unset takes the dialect's default (``DEFAULT_LIMITS``): OpenAI's
tier-5 figures for its small models, and the figures Cerebras' documentation shows.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from .profiles import Profile

MINUTE = 60.0
DAY = 86400.0

Headers = list[tuple[bytes, bytes]]

# dialect -> (requests/minute, tokens/minute, requests/day); None: not limited.
# Each dialect has a default for the request limit its headers advertise.
DEFAULT_LIMITS: dict[str, tuple[int | None, int, int | None]] = {
    "openai": (30_000, 150_000_000, None),
    "cerebras": (None, 1_000_000_000, 1_000_000_000),
}


def go_duration(seconds: float) -> str:
    """Format like Go's time.Duration.String() at millisecond precision ("12ms", "1s", "6m0s")."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms" if ms > 0 else "0s"
    if ms < 60_000:
        return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _wait_until_fits(
    window: Iterable[tuple[float, int]], used: int, need: int, limit: int, span: float, now: float
) -> float:
    """Seconds until enough old charges expire for `need` more units to fit under `limit`.

    Called only when they do not fit now; a request larger than the whole limit waits a full span.
    """
    if need <= limit:
        for stamp, amount in window:
            used -= amount
            if used + need <= limit:
                return max(0.0, stamp + span - now)
    return span


class RateLimiter:
    """Sliding minute window (requests + tokens) and day window (requests)."""

    def __init__(self, profile: Profile) -> None:
        rpm, tpm, rpd = DEFAULT_LIMITS[profile.dialect]
        self.rpm = profile.rpm if profile.rpm is not None else rpm
        self.tpm = profile.tpm if profile.tpm is not None else tpm
        self.rpd = profile.rpd if profile.rpd is not None else rpd
        self.cerebras = profile.dialect == "cerebras"
        self.advertise = profile.provider_headers
        self.reset()

    def reset(self) -> None:
        self._minute: deque[tuple[float, int]] = deque()  # (admitted at, tokens charged)
        self._day: deque[tuple[float, int]] = deque()  # (second admitted in, requests): bounded by a day's seconds
        self._day_requests = 0
        self._minute_tokens = 0

    def _expire(self, now: float) -> None:
        minute, day = self._minute, self._day
        while minute and minute[0][0] <= now - MINUTE:
            self._minute_tokens -= minute.popleft()[1]
        while day and day[0][0] <= now - DAY:
            self._day_requests -= day.popleft()[1]

    def admit(self, now: float, tokens: int) -> float:
        """Charge one request of `tokens`; return 0 if admitted, else seconds to wait."""
        self._expire(now)
        waits = []
        if self.rpm is not None and len(self._minute) + 1 > self.rpm:
            per_request = ((stamp, 1) for stamp, _ in self._minute)
            waits.append(_wait_until_fits(per_request, len(self._minute), 1, self.rpm, MINUTE, now))
        if self.tpm is not None and self._minute_tokens + tokens > self.tpm:
            waits.append(_wait_until_fits(self._minute, self._minute_tokens, tokens, self.tpm, MINUTE, now))
        if self.rpd is not None and self._day_requests + 1 > self.rpd:
            waits.append(_wait_until_fits(self._day, self._day_requests, 1, self.rpd, DAY, now))
        if waits:
            return max(max(waits), 0.001)
        self._minute.append((now, tokens))
        self._minute_tokens += tokens
        if self.rpd is not None:
            second = float(int(now))
            if self._day and self._day[-1][0] == second:
                self._day[-1] = (second, self._day[-1][1] + 1)
            else:
                self._day.append((second, 1))
            self._day_requests += 1
        return 0.0

    def _reset_in(self, window: deque[tuple[float, int]], span: float, now: float) -> float:
        """Seconds until the oldest charge leaves the window (capacity next frees up)."""
        return max(0.0, window[0][0] + span - now) if window else 0.0

    def headers(self, now: float) -> Headers:
        """The dialect's six quota headers as of ``now`` (none when the profile sends no provider headers)."""
        self._expire(now)
        if not self.advertise:
            return []
        return self._cerebras_headers(now) if self.cerebras else self._openai_headers(now)

    def _openai_headers(self, now: float) -> Headers:
        """Requests per minute and tokens per minute (a per-day limit is enforced, not advertised)."""
        rpm = self.rpm if self.rpm is not None else DEFAULT_LIMITS["openai"][0]
        reset = go_duration(self._reset_in(self._minute, MINUTE, now)).encode()  # one window holds both
        return [
            (b"x-ratelimit-limit-requests", b"%d" % rpm),
            (b"x-ratelimit-limit-tokens", b"%d" % self.tpm),
            (b"x-ratelimit-remaining-requests", b"%d" % max(0, rpm - len(self._minute))),
            (b"x-ratelimit-remaining-tokens", b"%d" % max(0, self.tpm - self._minute_tokens)),
            (b"x-ratelimit-reset-requests", reset),
            (b"x-ratelimit-reset-tokens", reset),
        ]

    def _cerebras_headers(self, now: float) -> Headers:
        """Requests per day and tokens per minute, resets in float seconds as Cerebras prints them
        (a per-minute request limit is enforced, not advertised)."""
        rpd = self.rpd if self.rpd is not None else DEFAULT_LIMITS["cerebras"][2]
        return [
            (b"x-ratelimit-limit-requests-day", b"%d" % rpd),
            (b"x-ratelimit-limit-tokens-minute", b"%d" % self.tpm),
            (b"x-ratelimit-remaining-requests-day", b"%d" % max(0, rpd - self._day_requests)),
            (b"x-ratelimit-remaining-tokens-minute", b"%d" % max(0, self.tpm - self._minute_tokens)),
            (b"x-ratelimit-reset-requests-day", repr(self._reset_in(self._day, DAY, now)).encode()),
            (b"x-ratelimit-reset-tokens-minute", repr(self._reset_in(self._minute, MINUTE, now)).encode()),
        ]


def retry_headers(wait: float) -> Headers:
    """retry-after (whole seconds, >= 1) and retry-after-ms for a refused request."""
    return [
        (b"retry-after", b"%d" % max(1, math.ceil(wait))),
        (b"retry-after-ms", b"%d" % max(1, math.ceil(wait * 1000))),
    ]
