"""Rate-limit facts as OpenAI spells them in HTTP headers (``x-ratelimit-*``, ``retry-after``)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from proxy.errors import ClientLimited
from proxy.limits.limiter import ClientWindow


def client_headers(windows: Sequence[ClientWindow]) -> list[tuple[bytes, bytes]]:
    """OpenAI-style x-ratelimit-* for the client's own request and token windows (the shortest of each kind)."""
    out: list[tuple[bytes, bytes]] = []
    done: set[str] = set()
    for window in sorted(windows, key=lambda w: w.span_ms):
        what = window.what
        if what == "concurrency" or what in done:
            continue
        done.add(what)
        out += [
            (b"x-ratelimit-limit-" + what.encode(), b"%d" % window.limit),
            (b"x-ratelimit-remaining-" + what.encode(), b"%d" % max(0, window.remaining)),
            (b"x-ratelimit-reset-" + what.encode(), go_duration(window.reset_ms / 1000).encode()),
        ]
    return out


def retry_headers(wait_ms: int) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(wait_ms / 1000))), "retry-after-ms": str(wait_ms)}


def client_refusal_headers(error: ClientLimited) -> dict[str, str]:
    """A client-limit 429's headers: when to retry, and the window that refused."""
    what = error.what
    if error.retry_ms < 0:  # the request alone exceeds the window: no retry helps
        return {f"x-ratelimit-limit-{what}": str(error.limit)}
    headers = retry_headers(error.retry_ms)
    if what != "concurrency":
        headers |= {
            f"x-ratelimit-limit-{what}": str(error.limit),
            f"x-ratelimit-remaining-{what}": "0",
            f"x-ratelimit-reset-{what}": go_duration(error.retry_ms / 1000),
        }
    return headers


def go_duration(seconds: float) -> str:
    """Like OpenAI's reset headers: ``12ms``, ``1.5s``, ``6m0s``."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    minutes, rem = divmod(ms, 60_000)
    secs = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
