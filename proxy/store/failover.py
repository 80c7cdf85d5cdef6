"""What the limiter and the budgets do while their shared store cannot answer: ``store.on_store_error``.

Only an outage comes here: a refused or failed connect, a dropped connection, a store that
stayed silent past ``timeout_ms``. A reply that is late because many calls are queued ahead of
it is back-pressure and is waited for (proxy/store/resp.py).

- ``fail_closed``: every call goes to the shared store, so admission resumes with the first
  call it answers again, and a call it cannot answer is refused (StoreUnavailable, answered
  503 with Retry-After): nothing is admitted without it.
- ``fail_open``: a call the shared store could not answer is answered by this process's
  in-memory twin against per-replica limits; for the next ``RETRY_STORE_S`` every call stays
  local, then one call tries the shared store again while the others stay local, until it
  answers. Every local admission is counted and logged: a line each time the store is tried
  again in vain, and the incident's total when it ends.

The limiter and the budgets each hold one ``Failover`` on the same store (``name`` and
``subject`` say which in the log lines and the refusal), so an outage is handled the same way for both.
"""
from __future__ import annotations

import logging
import time
from typing import Protocol

from proxy.errors import StoreUnavailable
from proxy.store.base import Store, StoreError

log = logging.getLogger("laneway.limits")

RETRY_STORE_S = 1.0  # fail-open serves locally this long before it tries the shared store again


class Counters(Protocol):
    """Where the counts go (the limiter's stats, read by metrics)."""

    store_errors: int
    local_admissions: int


class Failover:
    """Chooses the store for each admission and keeps the incident's log lines and counts."""

    def __init__(self, mode: str, shared: Store, local: Store, counters: Counters, *, name: str = "rate-limit",
                 subject: str = "Rate limits", code: str = "rate_limit_store_unavailable") -> None:
        self.closed = mode == "fail_closed"
        self.name = name          # in the log lines: "<name> store unreachable ..."
        self.subject = subject    # in the refusal: "<subject> cannot be checked right now ..."
        self.code = code
        self.shared = shared
        self.local = local
        self.counters = counters
        self.serving_locally = False     # fail_open during an incident
        self._retry_at = 0.0             # monotonic; while serving locally, the shared store is tried from then
        self._since: float | None = None # monotonic start of the incident (None: no incident)
        self._logged_at = 0.0            # monotonic; the incident's last log line
        self._local_since_line = 0        # local admissions since that line
        self._local_in_incident = 0

    def choose(self) -> Store:
        """The store to ask now: the shared one, unless fail_open is serving locally (then one
        caller per ``RETRY_STORE_S`` is handed the shared store to try)."""
        if not self.serving_locally:
            return self.shared
        now = time.monotonic()
        if now < self._retry_at:
            return self.local
        self._retry_at = now + RETRY_STORE_S
        return self.shared

    def failed(self, exc: StoreError) -> None:
        """An admission's call failed: under fail_closed raise StoreUnavailable; under fail_open serve locally."""
        self.counters.store_errors += 1
        self._begin(exc)
        if self.closed:
            raise StoreUnavailable.refusing(self.subject, self.code)
        now = time.monotonic()
        if self._local_since_line and now >= self._logged_at + RETRY_STORE_S:
            log.warning("%s store: still no answer (%s); %d requests admitted with per-replica limits since the last line",
                        self.name, exc, self._local_since_line)
            self._local_since_line = 0
            self._logged_at = now
        self.serving_locally = True
        self._retry_at = now + RETRY_STORE_S

    def background_failed(self, exc: StoreError) -> None:
        """A settle, renewal or provider report failed: logged as the incident, admissions unchanged
        (the next admission's own call decides whether the store is down)."""
        self.counters.store_errors += 1
        self._begin(exc)

    def admitted_locally(self) -> None:
        self.counters.local_admissions += 1
        self._local_since_line += 1
        self._local_in_incident += 1

    def answered(self) -> None:
        """The shared store answered an admission: an incident, if any, is over."""
        if self._since is None:
            return
        log.warning("%s store is reachable again after %.1fs; shared limits resume (%d requests were admitted "
                    "with per-replica limits meanwhile)", self.name, time.monotonic() - self._since, self._local_in_incident)
        self._since = None
        self.serving_locally = False
        self._local_since_line = self._local_in_incident = 0

    def _begin(self, exc: StoreError) -> None:
        if self._since is None:
            self._since = self._logged_at = time.monotonic()
            mode = "refusing requests" if self.closed else "serving with per-replica limits"
            log.warning("%s store unreachable (%s); %s until it is back", self.name, exc, mode)
