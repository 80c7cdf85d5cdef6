"""Read a provider's rate-limit headers, whatever dialect it speaks.

OpenAI / Groq: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, resets as Go
durations (``6m0s``, ``12ms``, ``2m59.56s``). Cerebras: the same prefix with a window suffix
(``-requests-day``, ``-tokens-minute``) and resets in float seconds (``33011.38``).
Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
with RFC 3339 reset times. ``retry-after`` (seconds or an HTTP date) and ``retry-after-ms``.
Each window becomes one ProviderWindow whose reset is in seconds from now, with the period it
refills over: a name ending in ``-day`` is per day, and so is Groq's ``requests`` window (Groq's
``x-ratelimit-*-requests`` is requests per day, OpenAI's the same name per minute: only the
provider tells them apart); every other window is per minute.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

_GO_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s))")
_SUB_SECOND = {"ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_OPENAI = b"x-ratelimit-"
_ANTHROPIC = b"anthropic-ratelimit-"
_FIELDS = ("limit", "remaining", "reset")
MINUTE_S = 60.0
DAY_S = 86_400.0


@dataclass(slots=True)
class ProviderWindow:
    window: str              # the provider's own name: "requests", "tokens-minute", "input-tokens"
    kind: str                # "requests" | "tokens" (input/output token windows count as tokens)
    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None
    span_s: float = MINUTE_S  # the period the window's limit is granted over


@dataclass(slots=True)
class ProviderReport:
    windows: list[ProviderWindow]
    retry_after_s: float | None = None

    def __bool__(self) -> bool:
        return bool(self.windows) or self.retry_after_s is not None


def parse_reset(value: str, now: float) -> float | None:
    """Seconds from ``now`` (epoch seconds) until a reset written in any dialect; None if unreadable."""
    value = value.strip()
    if not value:
        return None
    plain = _plain_duration(value)
    if plain is not None:
        return plain
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _GO_DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
        return sum(float(n) * scale[u] for n, u in parts)
    try:
        return max(0.0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now)
    except ValueError:
        return None


def _plain_duration(value: str) -> float | None:
    """A Go duration of one number and one unit ("59.999s", "12ms"), the form a sub-minute reset takes
    and the one that changes on every response; None for anything else."""
    if value[-1] != "s":
        return None
    scale = _SUB_SECOND.get(value[-2:])
    number = value[:-2] if scale else value[:-1]
    if not number.replace(".", "", 1).isdigit():
        return None
    try:
        return float(number) * (scale or 1.0)
    except ValueError:  # digits float() does not read
        return None


def parse_retry_after(value: str, now: float) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP date."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def span_s(window: str, provider: str) -> float:
    """The period a provider's window is granted over, from its name and who named it."""
    if window.endswith("-day") or (provider == "groq" and window == "requests"):
        return DAY_S
    return MINUTE_S


def _kind(window: str) -> str | None:
    if "token" in window:
        return "tokens"
    if "request" in window:
        return "requests"
    return None


def _name(name: bytes) -> tuple[str, str, str] | None:
    """(window, kind, field) of a rate-limit header name, None for any other header."""
    if name.startswith(_OPENAI):
        field, _, window = name[len(_OPENAI):].decode("latin-1").partition("-")
    elif name.startswith(_ANTHROPIC):
        window, _, field = name[len(_ANTHROPIC):].decode("latin-1").rpartition("-")
    else:
        return None
    kind = _kind(window)
    return (window, kind, field) if field in _FIELDS and kind is not None else None


# Every response carries the same dozen header names and, for a provider that counts in whole
# windows, few distinct reset values: both are read once, not on every response. Bounded, since
# names and values come from the upstream; a reset written as a date depends on ``now`` and is never kept.
_NAMES: dict[bytes, tuple[str, str, str] | None] = {}
_RESETS: dict[bytes, float | None] = {}
_CACHED = 1024


def _reset(raw: bytes, now: float) -> float | None:
    seconds = _RESETS.get(raw, _RESETS)
    if seconds is not _RESETS:
        return seconds  # type: ignore[return-value]
    value = raw.decode("latin-1")
    seconds = parse_reset(value, now)
    if len(_RESETS) < _CACHED and not any(c in value for c in "-:T"):  # not a date: the same bytes, the same seconds
        _RESETS[raw] = seconds
    return seconds


def parse_headers(headers: list[tuple[bytes, bytes]], now: float, provider: str = "") -> ProviderReport:
    """Every rate-limit window the headers describe; names must be lower-case bytes (as ASGI/h11 give them);
    ``provider`` (the deployment's, e.g. "groq") decides what a name without a period means."""
    windows: dict[str, ProviderWindow] = {}
    retry_after = retry_after_ms = None
    for name, raw in headers:
        if name == b"retry-after-ms":
            try:
                retry_after_ms = max(0.0, float(raw) / 1000)
            except ValueError:
                pass
            continue
        if name == b"retry-after":
            retry_after = parse_retry_after(raw.decode("latin-1"), now)
            continue
        known = _NAMES.get(name, _NAMES)
        if known is _NAMES:
            known = _name(name)
            if len(_NAMES) < _CACHED:
                _NAMES[name] = known
        if known is None:
            continue
        window, kind, field = known  # type: ignore[misc]
        entry = windows.get(window)
        if entry is None:
            entry = windows[window] = ProviderWindow(window, kind, span_s=span_s(window, provider))
        if field == "reset":
            entry.reset_s = _reset(raw, now)
        else:
            try:
                setattr(entry, field, int(raw) if raw.isdigit() else int(float(raw)))
            except ValueError:
                pass
    return ProviderReport(list(windows.values()), retry_after_ms if retry_after_ms is not None else retry_after)
