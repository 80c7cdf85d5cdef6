"""The circuit breaker: its states, and the events an operator sees when it opens and closes."""
from __future__ import annotations

import logging

from proxy.config.schema import BreakerSettings
from proxy.routing.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


def test_breaker_opens_half_opens_and_closes():
    breaker = Breaker(BreakerSettings(failures=3, cooldown_s=10, half_open_probes=1), "wafer")
    for _ in range(2):
        breaker.failure(0.0)
    assert breaker.state == CLOSED and breaker.allows(0.0)
    breaker.success()  # consecutive failures only
    for _ in range(3):
        breaker.failure(1.0)
    assert breaker.state == OPEN and not breaker.allows(5.0) and breaker.opens == 1
    assert breaker.allows(11.0)
    breaker.begin(11.0)
    assert breaker.state == HALF_OPEN and not breaker.allows(11.0), "one probe at a time"
    breaker.failure(12.0)
    assert breaker.state == OPEN and not breaker.allows(20.0) and breaker.opens == 2
    breaker.begin(22.5)
    breaker.abandon()  # a cancelled probe gives its slot back
    assert breaker.allows(22.5)
    breaker.begin(22.5)
    breaker.success()
    assert breaker.state == CLOSED and breaker.allows(22.6)


def test_opening_and_closing_are_logged_once_each_as_events(caplog):
    breaker = Breaker(BreakerSettings(failures=2, cooldown_s=1, half_open_probes=1), "wafer")
    with caplog.at_level(logging.INFO, logger="laneway.routing"):
        for now in (0.0, 0.1, 0.2):  # the third failure finds it open already: no second event
            breaker.failure(now)
        breaker.begin(1.5)
        breaker.success()
        breaker.success()  # already closed: nothing to say
    events = [(r.levelname, r.fields["event"], r.fields["deployment"]) for r in caplog.records]
    assert events == [("WARNING", "breaker_open", "wafer"), ("INFO", "breaker_closed", "wafer")]


def test_the_cooldown_ends_at_its_exact_instant_whatever_the_clock_reads():
    """At some clock values ``(t + 30) - t`` rounds to just under 30: the breaker must still read
    half-open at ``opened_at + cooldown_s`` (the routing test that asks this flaked 1 run in ~500)."""
    b = Breaker(BreakerSettings(failures=1, cooldown_s=30.0), "d")
    opened = 4082.1962638625105
    assert (opened + 30.0) - opened < 30.0  # such a clock value
    b.failure(opened)
    assert b.state_at(opened + 30.0) == HALF_OPEN and b.allows(opened + 30.0)
    assert b.state_at(opened + 29.999) == OPEN and not b.allows(opened + 29.999)
