"""Circuit breaker per deployment: stop sending to an upstream that keeps failing.

closed -> (``failures`` consecutive failures) -> open -> (``cooldown_s``) -> half-open, where
up to ``half_open_probes`` requests go through; a probe's success closes the breaker, its
failure opens it for another cooldown. Only faults count (5xx, connect errors, timeouts):
a 429 is the provider refusing quota, not failing (routing falls back and spills on its
headroom instead), and a client's own 4xx says nothing about the deployment's health.

``state_at`` reports what a request would meet now: an open breaker whose cooldown has
passed is half-open even if no request has come to probe it yet, so an idle deployment's
gauge and ``/admin/policy`` do not read ``open`` for ever.
"""
from __future__ import annotations

import logging
import time

from proxy.config.schema import BreakerSettings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
log = logging.getLogger("laneway.routing")


class Breaker:
    __slots__ = ("name", "settings", "state", "failures", "opened_at", "probes", "opens")

    def __init__(self, settings: BreakerSettings, name: str) -> None:
        self.name = name        # the deployment, for the events it logs
        self.settings = settings
        self.state = CLOSED
        self.failures = 0       # consecutive
        self.opened_at = 0.0
        self.probes = 0         # half-open requests in flight
        self.opens = 0          # times it opened (a plain counter for metrics)

    def state_at(self, now: float) -> str:
        """The state a request arriving at ``now`` would meet (open past its cooldown is half-open)."""
        if self.state == OPEN and self._cooled(now):
            return HALF_OPEN
        return self.state

    def allows(self, now: float) -> bool:
        """Whether a request may be sent now (does not reserve a probe: see ``begin``)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return self._cooled(now)
        return self.probes < self.settings.half_open_probes

    def begin(self, now: float) -> None:
        """A request is being sent; in open-after-cooldown or half-open it is a probe."""
        if self.state == OPEN and self._cooled(now):
            self.state = HALF_OPEN
            self.probes = 0
        if self.state == HALF_OPEN:
            self.probes += 1

    def _cooled(self, now: float) -> bool:
        """The cooldown has passed: compared as a deadline (``now - opened_at`` can round to just under
        ``cooldown_s`` at the very instant it ends)."""
        return now >= self.opened_at + self.settings.cooldown_s

    def abandon(self) -> None:
        """A request was cancelled before it said anything: give back its half-open probe slot."""
        if self.state == HALF_OPEN and self.probes > 0:
            self.probes -= 1

    def success(self) -> None:
        if self.state != CLOSED:
            log.info("breaker closed: %s answered again", self.name,
                     extra={"fields": {"event": "breaker_closed", "deployment": self.name}})
        self.state = CLOSED
        self.failures = 0
        self.probes = 0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.settings.failures:
            if self.state != OPEN:
                self.opens += 1
                log.warning("breaker open: %s failed %d times in a row; skipped for %.0fs", self.name, self.failures,
                            self.settings.cooldown_s, extra={"fields": {"event": "breaker_open", "deployment": self.name,
                                                                         "failures": self.failures}})
            self.state = OPEN
            self.opened_at = now
            self.probes = 0


class Breakers:
    """One breaker per deployment name, kept across reloads; settings follow the live policy."""

    def __init__(self) -> None:
        self._by_name: dict[str, Breaker] = {}

    def get(self, name: str, settings: BreakerSettings) -> Breaker:
        breaker = self._by_name.get(name)
        if breaker is None:
            breaker = self._by_name[name] = Breaker(settings, name)
        elif breaker.settings is not settings:
            breaker.settings = settings
        return breaker

    def states(self, now: float | None = None) -> dict[str, str]:
        """Each breaker's state as a request would meet it at ``now`` (default: the monotonic clock now)."""
        now = time.monotonic() if now is None else now
        return {name: b.state_at(now) for name, b in self._by_name.items()}
