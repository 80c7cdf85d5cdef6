"""Pacing a lane's scarce quota: the bar a request's gain must clear to use it once it runs low.

The fixed bar (``spill.reserve_min_gain_ms``) keeps the lane for the requests that gain at least
that much once a window is below ``reserve_fraction``. With ``spill.reserve_sized`` it keeps
only as much as they are expected to need: a request below the bar is spilled only while the
window's remainder, less its own cost, would not cover what the remembered requests above the
bar asked for, scaled to the window's period (``kept_for``). Unsized, the bar keeps the whole
rest of the window for a few long turns and lets it refill unused (seed 4242: the wafer lane
served 39% of the turns, the oracle 57%); sized, 51% and a p50 of 0.88 s instead of 1.48 s,
but no better a p95 (the turns it lets in first are not the ones the tail needed), so it is
not the default.

With ``spill.reserve_pace`` the bar is learnt from the lane's demand:
every request a lane with a reserve is predicted fastest for is remembered (when, the ms it
gains over the next candidate, its tokens). Once a window has less than ``reserve_fraction``
left, the quota that window grants over as long as the remembered demand spans (its limit per
``span_s``, pro rata) is handed to the remembered requests in order of gain, and the
gain of the first that no longer fits is the bar. So the lane is kept for the requests that
gain most from it at the rate its quota refills, and nobody is spilled while the demand fits.
"""
from __future__ import annotations

from collections import deque

from proxy.limits.headroom import Headroom

HISTORY_S = 60.0       # demand remembered: a minute window turns over once in this time
MIN_HISTORY_S = 15.0   # a shorter history counts as this long, so a cold start is not read as a flood
MAX_RECORDS = 256      # bounded memory (and sorting) per lane


class Demand:
    """Recent requests one lane was the fastest candidate for: (when, gain ms, tokens)."""

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: deque[tuple[float, float, int]] = deque(maxlen=MAX_RECORDS)

    def add(self, now: float, gain_ms: float, tokens: int) -> None:
        self._records.append((now, gain_ms, tokens))

    def kept_for(self, room: Headroom, min_gain_ms: float, need: int, reserve_fraction: float, now: float) -> bool:
        """Whether a request below ``min_gain_ms`` costing ``need`` tokens must leave the lane to the
        requests above it: some window below ``reserve_fraction`` would be left with less than they
        asked for over the last HISTORY_S (at least MIN_HISTORY_S), scaled to the window's period."""
        records = self._forget(now)
        if not records:
            return False
        history = max(MIN_HISTORY_S, now - records[0][0])
        above = [r for r in records if r[1] >= min_gain_ms]
        for window in room.windows.values():
            if now >= window.reset_at or not window.limit or window.remaining / window.limit >= reserve_fraction:
                continue
            requests = window.kind == "requests"
            asked = sum(1 if requests else tokens for _, _, tokens in above) * window.span_s / history
            if window.remaining - (1 if requests else need) < asked:
                return True
        return False

    def _forget(self, now: float) -> deque[tuple[float, float, int]]:
        records = self._records
        while records and records[0][0] < now - HISTORY_S:
            records.popleft()
        return records

    def bar_ms(self, room: Headroom, reserve_fraction: float, now: float) -> float:
        """The gain (ms) a request must exceed to use the lane now; 0 while no window is below
        ``reserve_fraction`` or the remembered demand fits what the low windows grant."""
        records = self._forget(now)
        if not records:
            return 0.0
        history = max(MIN_HISTORY_S, now - records[0][0])
        ranked: list[tuple[float, float, int]] | None = None
        bar = 0.0
        for window in room.windows.values():
            if now >= window.reset_at or not window.limit or window.remaining / window.limit >= reserve_fraction:
                continue
            if ranked is None:
                ranked = sorted(records, key=lambda r: -r[1])
            allowance = window.limit * history / window.span_s + 1  # the oldest record opens the history
            used = 0.0
            for _, gain, tokens in ranked:
                used += 1 if window.kind == "requests" else tokens
                if used > allowance:
                    bar = max(bar, gain)
                    break
        return bar
