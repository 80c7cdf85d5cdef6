"""How much quota each deployment has left, window by window: the one learner of it.

Two sources feed one view per deployment. The provider's rate-limit headers (every dialect
``provider_headers`` reads: OpenAI / Groq ``-requests`` / ``-tokens``, Cerebras
``-requests-day`` / ``-tokens-minute``, Anthropic's ``anthropic-ratelimit-*``), parsed once per
response in ``HeadroomLearner.learn``; and, when the limiter is active, what each admission
left in our own configured windows (``rpm``, ``tpm``, ``rpd``, ``tpd``). Each window keeps its
own remaining count and reset, so a per-day cap and a per-minute one are both visible and
neither hides the other: the newest word about a window replaces the old one, and the
tightest live window binds. Between responses provider windows are debited locally for every
request sent, so a burst does not all see the same stale figure.

A 429 blocks the deployment for its ``retry-after``, or, without one, until the earliest reset
of the windows it names (those at 0), else of the shortest window it reports. It never sets a
window it does not name to 0: one per-minute refusal from a provider whose only request window
is per day would otherwise spill the lane until tomorrow. A named window's reset is bounded
by the ``retry-after``.

A provider may enforce a window it never advertises (Cerebras: 30 requests a minute, while its
headers speak only of a day's requests and a minute's tokens). A 429 that names none of the
windows reported, and asks to wait just until the oldest request we sent in the last minute
leaves it, is read as such a window: a sliding minute of as many requests as were admitted in
it (``HIDDEN``). From then on it is kept from our own log of requests sent, like any window,
so spill and reserve see it running low before the next 429 (without it the reserve saw
no scarcity and 429s rationed the lane in arrival order); the limit rises to any count the
provider admits beyond it.

Routing reads ``headroom(name)``; the limiter subscribes (``sink``) to write the provider's word
to its shared store, so each response's headers are parsed once for both.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from proxy.limits.provider_headers import MINUTE_S, ProviderWindow, parse_headers

DEFAULT_429_WAIT_S = 1.0  # a bare 429: no retry-after and no window to read a reset from
HIDDEN = "requests-minute-inferred"  # a per-minute request window read from 429s (see the module docstring)
HIDDEN_MATCH_S = 2.0      # how close a 429's wait must come to our oldest request's leaving the minute
MAX_SENT = 4096           # requests remembered per deployment (a minute's worth at most)

# deployment, the provider's windows (resets bounded by a 429's retry-after), ms the 429 blocks for
Sink = Callable[[str, list[ProviderWindow], int], None]


@dataclass(slots=True)
class Window:
    """One quota window; ``reset_at`` is ``time.monotonic()``; ``limit`` None when not stated."""

    kind: str                 # "requests" | "tokens"
    remaining: float
    limit: float | None
    reset_at: float
    provider: bool = True     # the provider's word (debited per request sent), else our configured bucket
    span_s: float = MINUTE_S  # the period ``limit`` is granted over (pacing reads it)


@dataclass(slots=True)
class Headroom:
    """Quota left on one deployment: its windows by name ("requests-day", "tpm", ...)."""

    windows: dict[str, Window] = field(default_factory=dict)
    exhausted_until: float = 0.0     # an upstream 429 said so

    def live(self, now: float) -> Iterable[Window]:
        """Windows whose figures still hold (a window past its reset has refilled)."""
        return (w for w in self.windows.values() if now < w.reset_at)

    def tightest(self, kind: str) -> Window | None:
        """The window of ``kind`` with the least left, as last reported (expired ones included)."""
        return min((w for w in self.windows.values() if w.kind == kind), key=lambda w: w.remaining, default=None)

    @property
    def requests(self) -> float | None:
        window = self.tightest("requests")
        return None if window is None else window.remaining

    @property
    def tokens(self) -> float | None:
        window = self.tightest("tokens")
        return None if window is None else window.remaining

    def fraction_left(self, now: float) -> float:
        """The smallest share left of any live window with a stated limit (1.0 when none)."""
        if now < self.exhausted_until:
            return 0.0
        shares = [w.remaining / w.limit for w in self.live(now) if w.limit]
        return max(0.0, min(shares, default=1.0))

    def short(self, need_tokens: int, min_requests: int, min_tokens: int, now: float) -> str | None:
        """Why this deployment should be spilled from now ("requests" / "tokens"), or None."""
        if now < self.exhausted_until:
            return "requests"
        for w in self.live(now):
            if w.kind == "requests" and w.remaining < min_requests:
                return "requests"
            if w.kind == "tokens" and w.remaining < need_tokens + min_tokens:
                return "tokens"
        return None


class HeadroomLearner:
    """Headroom of every deployment, from provider headers and our own admissions; one per process."""

    def __init__(self) -> None:
        self._by_name: dict[str, Headroom] = {}
        self._sent: dict[str, deque[float]] = {}   # deployment -> when its requests of the last minute were sent
        self._hidden: dict[str, int] = {}          # deployment -> the limit of its inferred HIDDEN window
        self.sink: Sink | None = None  # the limiter, to share the provider's word through its store

    def headroom(self, deployment: str) -> Headroom | None:
        return self._by_name.get(deployment)

    def sent(self, deployment: str, tokens: int, now: float | None = None) -> None:
        """A request was sent: count it against what the provider last reported."""
        now = time.monotonic() if now is None else now
        log = self._sent.get(deployment)
        if log is None:
            log = self._sent[deployment] = deque(maxlen=MAX_SENT)
        log.append(now)
        room = self._by_name.get(deployment)
        if room is None:
            return
        for w in room.windows.values():
            if w.provider:
                w.remaining -= 1 if w.kind == "requests" else tokens
        self._keep_hidden(deployment, room, now)

    def _last_minute(self, deployment: str, now: float) -> deque[float]:
        log = self._sent.setdefault(deployment, deque(maxlen=MAX_SENT))
        while log and log[0] <= now - MINUTE_S:
            log.popleft()
        return log

    def _keep_hidden(self, deployment: str, room: Headroom, now: float) -> None:
        """The HIDDEN window from our log: what is left of its limit, and when the oldest request leaves it."""
        limit = self._hidden.get(deployment)
        if limit is None:
            return
        log = self._last_minute(deployment, now)
        reset_at = log[0] + MINUTE_S if log else now + MINUTE_S
        room.windows[HIDDEN] = Window("requests", limit - len(log), limit, reset_at, provider=False)

    def _infer_hidden(self, deployment: str, named: list[ProviderWindow], windows: list[ProviderWindow],
                      wait_s: float | None, now: float) -> None:
        """A 429 refused the last request sent (it takes no place in any window); one naming none of
        the windows reported, that asks to wait until our oldest request leaves the last minute,
        sets the HIDDEN window to the requests admitted in that minute."""
        log = self._last_minute(deployment, now)
        if log:
            log.pop()
        if named or not windows or wait_s is None or not log:
            return
        if abs(log[0] + MINUTE_S - now - wait_s) <= HIDDEN_MATCH_S:
            self._hidden[deployment] = len(log)

    def learn(self, deployment: str, status: int, headers: list[tuple[bytes, bytes]], now: float | None = None,
              provider: str = "") -> None:
        """Update from one response's headers and status (parsed here, once, for routing and the limiter);
        ``provider`` is the deployment's (its dialect says what period an unsuffixed window has)."""
        report = parse_headers(headers, time.time(), provider)
        if not report and status != 429:
            return
        now = time.monotonic() if now is None else now
        room = self._by_name.setdefault(deployment, Headroom())
        windows = [w for w in report.windows if w.remaining is not None and w.reset_s is not None]
        blocked_s = 0.0
        if status == 429:
            named = [w for w in windows if w.remaining <= 0]
            wait = report.retry_after_s
            self._infer_hidden(deployment, named, windows, wait, now)
            if wait is None:
                wait = min((w.reset_s for w in named or windows), default=DEFAULT_429_WAIT_S)
            else:
                for w in named:
                    w.reset_s = min(w.reset_s, wait)
            blocked_s = wait
            room.exhausted_until = max(room.exhausted_until, now + wait)
        for w in windows:
            room.windows[w.window] = Window(w.kind, w.remaining, w.limit, now + w.reset_s, span_s=w.span_s)
        hidden = self._hidden.get(deployment)
        if hidden is not None:
            if status != 429:  # admitted: the window holds at least what it holds now
                self._hidden[deployment] = max(hidden, len(self._last_minute(deployment, now)))
            self._keep_hidden(deployment, room, now)
        if self.sink is not None:
            self.sink(deployment, windows, max(1, int(blocked_s * 1000)) if status == 429 else 0)

    def admitted(self, deployment: str, window: str, kind: str, remaining: float, limit: float, reset_s: float,
                 span_s: float = MINUTE_S, now: float | None = None) -> None:
        """What an admission left in one of our configured windows (``rpm``, ``tpd``, ...) of ``span_s``."""
        now = time.monotonic() if now is None else now
        room = self._by_name.setdefault(deployment, Headroom())
        room.windows[window] = Window(kind, remaining, limit, now + reset_s, provider=False, span_s=span_s)
