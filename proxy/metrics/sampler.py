"""Copy other components' plain counters and snapshots into Prometheus families.

Routing, the limiter, accounting and WebSocket mode keep plain integers and small
snapshots rather than Prometheus objects, so nothing on their hot paths touches a metric.
Each worker samples them about once a second and just before it renders /metrics:
counters advance by the difference since the last sample (so they add up across workers),
gauges are set to the current value. Spend is priced here too, from the request observer's
running token totals, at the price in force now: off the response path.

When a policy is loaded (the first sample after it) the series its routes can produce are
created at zero, so ``rate()`` over a route's first request or WebSocket turn sees it grow
instead of a series that starts at 1.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol

from proxy.config.reload import PolicyReloader
from proxy.config.schema import Policy
from proxy.limits import Limiter
from proxy.metrics import families as m
from proxy.metrics.observer import NONE, RequestMetrics
from proxy.pricing.accounting import Accounting
from proxy.pricing.catalogue import active
from proxy.pricing.schedules import Tokens, cost
from proxy.routing.breaker import CLOSED, HALF_OPEN, OPEN
from proxy.routing.live import RoutingState
from proxy.upstream.ws_pool import SocketPools

_BREAKER_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
# Our limiter's window names (limits.buckets) -> the unit they count.
_LANEWAY_UNITS = {"rpm": "requests", "rpd": "requests", "tpm": "tokens", "tpd": "tokens", "concurrency": "requests"}
# (transport, endpoints) a route's requests can arrive on.
_ARRIVALS = (("http", ("chat", "completions", "responses", "embeddings")), ("websocket", ("responses",)))
_WS_EVENTS = (("turns", "turn"), ("warmups", "warmup"), ("errors", "error"),
              ("client_drops", "client_drop"), ("connection_limit", "connection_limit"))
_UPSTREAM_WS_EVENTS = (("connects", "connect"), ("connect_failures", "connect_failure"), ("turns", "turn"),
                      ("http_fallbacks", "http_fallback"), ("drops", "drop"), ("continued", "continuation"),
                      ("continue_misses", "continuation_miss"))
_BUDGET_LIMITS = (("day", "soft", "daily_soft_usd"), ("day", "hard", "daily_hard_usd"),
                  ("month", "soft", "monthly_soft_usd"), ("month", "hard", "monthly_hard_usd"))


class Sources(Protocol):
    """The components a worker samples, as the app holds them (its ProxyState); read each tick
    because a reload replaces the policy and the reloader starts after the sampler."""

    limiter: Limiter
    routing: RoutingState
    accounting: Accounting
    sockets: SocketPools
    reloader: PolicyReloader | None

    @property
    def policy(self) -> Policy: ...


class Sampler:
    def __init__(self, state: Sources, observer: RequestMetrics, websocket_stats: object | None = None) -> None:
        self._state = state
        self._observer = observer
        self._ws = websocket_stats
        self._last: dict[object, int] = {}
        self._priced: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        self._policy: Policy | None = None

    def sample(self) -> None:
        state = self._state
        policy = state.policy
        if policy is not self._policy:
            self._policy = policy
            _create_series(policy)
        limiter = state.limiter
        self._routing(state, policy.deployments, provider_view=not limiter.active)
        self._limits(limiter.stats)
        if limiter.leases is not None:
            self._advance("leases", limiter.leases.borrowed, m.ratelimit_leases)
            self._advance("leased_admissions", limiter.leases.admitted, m.ratelimit_leased_admissions)
        self._accounting(state.accounting)
        self._cost(policy.deployments)
        reloader = state.reloader
        if reloader is not None:
            self._advance("reloads_ok", reloader.reloads_ok, m.policy_reloads.labels("ok"))
            self._advance("reloads_failed", reloader.reloads_failed, m.policy_reloads.labels("failed"))
        if self._ws is not None:
            self._websocket(self._ws)
        self._upstream_sockets(state)

    def _advance(self, key: object, value: int, counter) -> None:
        """Add what ``value`` grew by since the last sample (a counter that restarted counts from 0)."""
        last = self._last.get(key, 0)
        if value < last:
            last = 0
        if value > last:
            counter.inc(value - last)
        self._last[key] = value

    def _routing(self, state: Sources, deployments, provider_view: bool) -> None:
        """Breakers; and, without a limiter, the provider's quota as the router learnt it from headers."""
        live = state.routing
        states = live.breakers.states()
        now = time.monotonic()
        for name in deployments:
            m.breaker_state.labels(name).set(_BREAKER_VALUE.get(states.get(name, CLOSED), 0))
            if not provider_view:
                continue
            room = live.headroom.headroom(name)
            if room is None:
                continue
            for window, w in room.windows.items():
                if w.provider:
                    _provider_window(name, window, w.kind, w.remaining, w.limit, w.reset_at, now)

    def _limits(self, stats) -> None:
        for (scope, name), refused in list(stats.rejections.items()):
            self._advance(("rejected", scope, name), refused, m.ratelimit_rejections.labels(scope, name))
        for (deployment, window), (left, limit, _reset_at) in list(stats.remaining.items()):
            unit = _LANEWAY_UNITS.get(window, "requests")
            m.ratelimit_remaining.labels(deployment, window, unit, "laneway").set(max(0, left))
            m.ratelimit_limit.labels(deployment, window, unit, "laneway").set(limit)
        now = time.time()
        for (deployment, window), (left, limit, reset_at) in list(stats.provider.items()):
            _provider_window(deployment, window, _provider_unit(window), left, limit, reset_at, now)
        for deployment, (error_sum, settled) in list(stats.reservation_error.items()):
            m.reservation_error.labels(deployment).set(error_sum)
            self._advance(("settled", deployment), settled, m.reservations_settled.labels(deployment))
        self._advance("limits_store_errors", stats.store_errors, m.redis_errors.labels("limits"))
        self._advance("local_admissions", stats.local_admissions, m.ratelimit_local_admissions)

    def _accounting(self, accounting) -> None:
        self._advance("ledger_flush_errors", accounting.ledger.counters.flush_errors, m.redis_errors.labels("ledger"))
        budgets = accounting.budgets
        self._advance("budget_refused", budgets.refusals, m.budget_actions.labels("refused"))
        self._advance("budget_rerouted", budgets.soft_reroutes, m.budget_actions.labels("rerouted"))
        if not budgets.enabled:
            return
        now = datetime.now(timezone.utc)
        current = {"day": now.strftime("%Y-%m-%d"), "month": now.strftime("%Y-%m")}
        for scope, table in (("key", budgets.by_key), ("team", budgets.by_team)):
            for name, budget in table.items():
                for period in ("day", "month"):
                    m.budget_spent.labels(scope, name, period).set(float(budgets.spent(scope, name, current[period])))
                for period, kind, field in _BUDGET_LIMITS:
                    limit = getattr(budget, field)
                    if limit is not None:
                        m.budget_limit.labels(scope, name, period, kind).set(float(limit))

    def _cost(self, deployments) -> None:
        """Price the tokens used since the last sample, per (team, deployment)."""
        now = None
        for (team, name), usage in list(self._observer.usage.items()):
            used = tuple(usage)
            last = self._priced.get((team, name), (0, 0, 0, 0))
            if used == last:
                continue
            self._priced[(team, name)] = used
            dep = deployments.get(name)
            if dep is None:
                continue
            now = now or datetime.now(timezone.utc)
            price = active().price_at(dep.model, now, dep.provider)
            if price is None:
                continue
            new = Tokens(input=used[0] - last[0], cached=used[1] - last[1], output=used[2] - last[2], reasoning=used[3] - last[3])
            m.cost.labels(team, name, price.status).inc(float(cost(price, new)))

    def _websocket(self, stats) -> None:
        self._advance("ws_accepted", stats.connections_total, m.ws_connections.labels("accepted"))
        self._advance("ws_refused", stats.refused, m.ws_connections.labels("refused"))
        for field, kind in _WS_EVENTS:
            self._advance(("ws", field), getattr(stats, field), m.ws_events.labels(kind))
        m.ws_open.set(stats.connections_open)


    def _upstream_sockets(self, state: Sources) -> None:
        """Summed over the socket pools (one per provider URL and key; deployments can share one)."""
        pools = list(state.sockets.pools.values())
        for field, kind in _UPSTREAM_WS_EVENTS:
            self._advance(("upstream_ws", field), sum(getattr(p.stats, field) for p in pools), m.upstream_ws_events.labels(kind))
        m.upstream_ws_open.set(sum(p.open for p in pools))


def _create_series(policy: Policy) -> None:
    """The series a policy's routes, deployments and declared limits can produce, at zero.

    Declared limits export their size at once (what is left comes with the first admission).
    """
    routes = [(route.name, route.candidates) for route in policy.routes.values()]
    routes += [(name, (name,)) for name in policy.deployments if name not in policy.routes]
    for route, candidates in routes:
        for name in candidates:
            dep = policy.deployments.get(name)
            if dep is None:
                continue
            lane = dep.hardware or NONE
            m.decode_rate.labels(route, name, lane)
            for transport, endpoints in _ARRIVALS:
                m.request_duration.labels(route, name, lane, transport)
                m.ttft.labels(route, name, lane, transport)
                for endpoint in endpoints:
                    m.requests.labels(route, name, lane, "200", transport, endpoint)
    for name, dep in policy.deployments.items():
        m.upstream_rate_limited.labels(name)
        if dep.limits is None:
            continue
        for window, unit in _LANEWAY_UNITS.items():
            value = getattr(dep.limits, window)
            if value is not None:
                m.ratelimit_limit.labels(name, window, unit, "laneway").set(value)


def _provider_unit(window: str) -> str:
    """A provider window's unit from its name (``tokens-minute``, ``requests-day``, ``input-tokens``)."""
    return "tokens" if "token" in window else "requests"


def _provider_window(deployment: str, window: str, unit: str, remaining: float | None, limit: float | None,
                     reset_at: float, now: float) -> None:
    """What the provider said is left; once its reset time has passed the window is full again.

    Only windows whose size the provider stated: a bare 429 says "none left" but not how much
    comes back, and a stale 0 would read as exhaustion long after the window refilled. Its 429s,
    the sign of a window it enforces without stating, are counted by the request observer.
    """
    if remaining is None or limit is None:
        return
    m.ratelimit_limit.labels(deployment, window, unit, "provider").set(limit)
    m.ratelimit_remaining.labels(deployment, window, unit, "provider").set(limit if now >= reset_at else max(0.0, remaining))
