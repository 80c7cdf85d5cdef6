"""Routing state that outlives a policy: statistics, quota views, breakers and counters.

A reload builds a new Router from the new policy but hands it this same object, so a
deployment keeps what was learnt about it (keyed by deployment name) across reloads.
"""
from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field

from proxy.limits.headroom import HeadroomLearner
from proxy.routing.breaker import Breakers
from proxy.routing.reserve import Demand
from proxy.routing.stats import LatencyStats

log = logging.getLogger("laneway.routing")


@dataclass(slots=True)
class RoutingCounters:
    """Plain counters for metrics exporters; this process only."""

    spills: int = 0            # the preferred candidate was passed over for quota headroom
    fallbacks: int = 0         # a request was served by a later candidate after a failure
    breaker_skips: int = 0     # the preferred candidate was passed over because its breaker is open
    hedges_started: int = 0    # a second attempt was started because the first was slow
    hedges_won: int = 0        # ... and the second attempt delivered the first token
    probes: int = 0            # a lane its measurements demoted was sent a request to see if it recovered

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class RoutingState:
    stats: LatencyStats = field(default_factory=LatencyStats)
    headroom: HeadroomLearner = field(default_factory=HeadroomLearner)  # the limiter's learner, in a ProxyState
    breakers: Breakers = field(default_factory=Breakers)
    counters: RoutingCounters = field(default_factory=RoutingCounters)
    rng: random.Random = field(default_factory=random.Random)
    short_of_quota: dict[str, str] = field(default_factory=dict)  # deployment -> "requests" | "tokens", while spilled
    demand: dict[str, Demand] = field(default_factory=dict)  # deployment -> requests it was fastest for (spill.reserve_*)

    def note_quota(self, deployment: str, short: str | None) -> None:
        """Log when a deployment starts and stops being spilled for lack of quota (events, not every request)."""
        was = self.short_of_quota.get(deployment)
        if short == was:
            return
        if short is None:
            del self.short_of_quota[deployment]
            log.info("spill stopped: %s has %s again", deployment, was,
                     extra={"fields": {"event": "spill_stopped", "deployment": deployment, "window": was}})
            return
        self.short_of_quota[deployment] = short
        log.info("spill started: %s is short of %s; requests go to the next candidates first", deployment, short,
                 extra={"fields": {"event": "spill_started", "deployment": deployment, "window": short}})
