"""Per key and per team USD budgets (daily and monthly, UTC): soft limits prefer cheaper
candidates, hard limits refuse with 429 ``insufficient_quota``.

Like tokens at a provider, a request's cost is reserved from an estimate when it is
admitted and reconciled with its real cost when it finishes, so a burst of concurrent
requests cannot all slip under a limit that only the first of them fitted. Spend lives in
the rate limiter's store as integer micro-USD counters (one per scope, name and period):
Redis when ``store.redis_url`` is set, so every replica enforces one shared budget, else the
in-memory twin. Reports keep Decimal; only the counters are integers.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from proxy.call import ModelRequest, Outcome
from proxy.config.schema import Budget, Deployment, Policy
from proxy.errors import BudgetExceeded
from proxy.pricing.catalogue import active
from proxy.pricing.ledger import UsageRow
from proxy.pricing.reports import hour_start
from proxy.pricing.schedules import Tokens, cost
from proxy.store.base import Store, StoreError
from proxy.store.failover import Failover
from proxy.store.memory import MemoryStore

log = logging.getLogger("laneway")

ZERO = Decimal(0)
MICRO = Decimal(1_000_000)
# One hash tag for every counter: a request's key and team counters are reserved in one script
# call, which Redis Cluster allows only within one slot.
COUNTER_PREFIX = "laneway:budget:{lw-budget}:"


def micros(usd: Decimal) -> int:
    """USD as whole micro-USD, rounded up: a reservation or a cost is never under-counted."""
    return int((usd * MICRO).to_integral_value(ROUND_CEILING))


def limit_micros(usd: Decimal) -> int:
    """A limit as whole micro-USD, rounded down: a limit is never over-stated."""
    return int((usd * MICRO).to_integral_value(ROUND_FLOOR))


def periods(now: datetime) -> tuple[str, str]:
    return now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")


def _expiries(now: datetime) -> tuple[int, int]:
    """Epoch ms a day's and a month's counter may be dropped: a day after the period ends."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    return (int((day + timedelta(days=2)).timestamp() * 1000),
            int((next_month + timedelta(days=1)).timestamp() * 1000))


@dataclass(frozen=True, slots=True)
class Counter:
    """One budget limit's running spend: ``where`` is (scope, name, period label)."""

    where: tuple[str, str, str]
    key: str
    expiry_ms: int
    what: str                 # "daily" | "monthly", for messages
    soft: Decimal | None
    hard: Decimal | None


@dataclass(slots=True)
class Hold:
    """A request's reservation, a value its caller gives back to ``finish``: what it holds, in
    which store, in which counters; ``soft`` says a soft limit is passed (prefer cheaper candidates)."""

    counters: list[Counter]
    amount: int
    store: Store
    soft: bool


class Budgets:
    def __init__(self, policy: Policy) -> None:
        self.store: Store = MemoryStore()
        self.fallback = MemoryStore()
        self.failover = self._failover("fail_open")
        self._seen: dict[tuple[str, str, str], int] = {}    # (scope, name, period) -> micro-USD at our last look
        self._tasks: set[asyncio.Task] = set()
        self.refusals = 0
        self.soft_reroutes = 0
        self.store_errors = 0
        self.local_admissions = 0  # reservations this replica counted alone while the store was down
        self.use_policy(policy)

    def use_policy(self, policy: Policy) -> None:
        self.deployments = policy.deployments
        self.by_key = {k.name: k.budget for k in policy.keys if k.budget is not None}
        self.by_team = dict(policy.team_budgets)
        self.enabled = bool(self.by_key or self.by_team)

    def use_store(self, store: Store, on_store_error: str) -> None:
        """Count spend in the rate limiter's store (shared with the other replicas when it is Redis)."""
        self.store = store
        self.failover = self._failover(on_store_error)

    def _failover(self, on_store_error: str) -> Failover:
        return Failover(on_store_error, self.store, self.fallback, self, name="budget", subject="Budgets",
                        code="budget_store_unavailable")

    def applies(self, key: str, team: str | None) -> bool:
        return self.enabled and (key in self.by_key or (team is not None and team in self.by_team))

    def spent(self, scope: str, name: str, period: str) -> Decimal:
        """Spend plus reservations as this process last saw them (USD; for the metrics gauge)."""
        return Decimal(self._seen.get((scope, name, period), 0)) / MICRO

    def counters(self, key: str, team: str | None, now: datetime) -> list[Counter]:
        day, month = periods(now)
        day_expiry, month_expiry = _expiries(now)
        found = []
        for scope, name, budget in self._budgets(key, team):
            for period, expiry, what, soft, hard in (
                    (day, day_expiry, "daily", budget.daily_soft_usd, budget.daily_hard_usd),
                    (month, month_expiry, "monthly", budget.monthly_soft_usd, budget.monthly_hard_usd)):
                if soft is not None or hard is not None:
                    found.append(Counter((scope, name, period), f"{COUNTER_PREFIX}{scope}:{name}:{period}",
                                         expiry, what, soft, hard))
        return found

    async def borrow(self, outcome: Outcome, candidates: Iterable[str], req: ModelRequest,
                     output_tokens: int) -> Hold | None:
        """Reserve the request's estimated cost before dispatch (BudgetExceeded over a hard limit).

        ``output_tokens`` is what the request is expected to write (its max tokens, else the
        route's learnt high quantile); the estimate is the dearest priced candidate's, since
        routing may fall back to it. None when no budget applies."""
        if not self.applies(outcome.key_name, outcome.team):
            return None
        out = output_tokens
        priced = [value for value in (self.estimate(self.deployments[name], req.input_estimate, out)
                                      for name in candidates if name in self.deployments) if value is not None]
        hold = await self.reserve(outcome, max(priced) if priced else ZERO)
        if hold is not None and hold.soft:
            self.soft_reroutes += 1
        return hold

    async def reserve(self, outcome: Outcome, estimate: Decimal, now: datetime | None = None) -> Hold | None:
        """Reserve ``estimate`` in every counter of the request's key and team, atomically in one
        store call; BudgetExceeded when a hard limit would be passed."""
        counters = self.counters(outcome.key_name, outcome.team, now or datetime.now(timezone.utc))
        if not counters:
            return None
        amount = micros(estimate)
        keys = [c.key for c in counters]
        hard = [-1 if c.hard is None else limit_micros(c.hard) for c in counters]
        expiry = [c.expiry_ms for c in counters]
        store = self.failover.choose()
        try:
            result = await store.reserve_spend(keys, hard, amount, expiry)
        except StoreError as exc:
            self.failover.failed(exc)  # fail_closed: raises StoreUnavailable
            store = self.fallback
            result = await store.reserve_spend(keys, hard, amount, expiry)
        if store is self.fallback:
            self.failover.admitted_locally()
        else:
            self.failover.answered()
        if not result.admitted:
            self.refusals += 1
            counter = counters[result.refused]
            scope, name, _ = counter.where
            self._seen[counter.where] = result.spent[0]
            spent = (Decimal(result.spent[0]) / MICRO).quantize(Decimal("0.01"))
            raise BudgetExceeded(
                f"The {counter.what} budget of {scope} '{name}' (${counter.hard}) is used up (${spent} "
                f"spent or reserved). Ask your Laneway admin to raise it, or retry in the next {counter.what[:-2]} period.")
        soft = False
        for counter, before in zip(counters, result.spent):
            self._seen[counter.where] = before + amount
            if counter.soft is not None and before + amount > limit_micros(counter.soft):
                soft = True
        return Hold(counters, amount, store, soft)

    def finish(self, outcome: Outcome, hold: Hold | None) -> None:
        """Replace ``hold`` with the outcome's real cost (reconciliation). An outcome that reserved
        nothing (a hedge attempt that lost the race) adds what it consumed."""
        if not self.enabled:
            return
        if hold is None and not self.applies(outcome.key_name, outcome.team):
            return
        actual = self._cost(outcome)
        if hold is not None:
            if actual != hold.amount:
                self._adjust(hold.store, hold.counters, actual - hold.amount)
        elif actual:
            store = self.fallback if self.failover.serving_locally else self.store
            self._adjust(store, self.counters(outcome.key_name, outcome.team, datetime.now(timezone.utc)), actual)

    def _cost(self, outcome: Outcome) -> int:
        """The outcome's cost in micro-USD at the price in force now (0 when unpriced or not sent)."""
        dep = self.deployments.get(outcome.deployment) if outcome.deployment is not None else None
        if dep is None:
            return 0
        price = active().price_at(dep.model, datetime.now(timezone.utc), dep.provider)
        if price is None:
            return 0
        tokens = Tokens(outcome.input_tokens, outcome.cached_tokens, outcome.output_tokens, outcome.reasoning_tokens)
        return micros(cost(price, tokens))

    def _adjust(self, store: Store, counters: list[Counter], delta: int) -> None:
        if not counters:
            return
        for counter in counters:
            self._seen[counter.where] = self._seen.get(counter.where, 0) + delta
        task = asyncio.get_running_loop().create_task(
            self._guard(store.adjust_spend([c.key for c in counters], delta, [c.expiry_ms for c in counters])))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, call) -> None:
        try:
            await call
        except StoreError as exc:  # the reservation stays counted: budgets err on the side of refusing
            self.failover.background_failed(exc)
            log.warning("budgets: cannot reconcile a reservation (%s)", exc)

    async def seed(self, rows: Iterable[UsageRow], provider_of, now: datetime) -> None:
        """This month's spend from the ledger, for counters nobody has written yet (first start
        with budgets, or a store that lost them); counters that exist are left alone."""
        book = active()
        day, month = periods(now)
        totals: dict[tuple[str, str, str], Decimal] = {}
        for row in rows:
            when = hour_start(row.hour)
            price = book.price_at(row.model, when, provider_of(row.deployment))
            if price is None:
                continue
            row_day, row_month = periods(when)
            amount = cost(price, row.tokens)
            for scope, name in (("key", row.key), ("team", row.team)):
                for period in {row_day, row_month} & {day, month}:
                    where = (scope, name, period)
                    totals[where] = totals.get(where, ZERO) + amount
        wanted = [c for key in self.by_key for c in self.counters(key, None, now)]
        wanted += [c for team in self.by_team for c in self.counters("", team, now)]
        for counter in wanted:
            amount = totals.get(counter.where)
            if amount:
                await self.store.seed_spend(counter.key, micros(amount), counter.expiry_ms)

    def estimate(self, deployment: Deployment, input_tokens: int, output_tokens: int) -> Decimal | None:
        price = active().price_at(deployment.model, datetime.now(timezone.utc), deployment.provider)
        return None if price is None else cost(price, Tokens(input=input_tokens, output=output_tokens))

    def _budgets(self, key: str, team: str | None) -> list[tuple[str, str, Budget]]:
        found = []
        if key in self.by_key:
            found.append(("key", key, self.by_key[key]))
        if team is not None and team in self.by_team:
            found.append(("team", team, self.by_team[team]))
        return found

