"""Per key and per team USD budgets (daily and monthly, UTC): soft limits prefer cheaper
candidates, hard limits refuse with 429 ``insufficient_quota``.

Like tokens at a provider, a request's cost is reserved from an estimate when it is
admitted and reconciled with its real cost when it finishes, so a burst of concurrent
requests cannot all slip under a limit that only the first of them fitted.
Spend is kept in process (seeded from the ledger at startup).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal

from proxy.config.schema import Budget, Deployment, Policy, Route
from proxy.errors import ProxyError
from proxy.pricing.catalogue import active
from proxy.pricing.ledger import UsageRow
from proxy.pricing.reports import hour_start
from proxy.pricing.schedules import Tokens, cost
from proxy.upstream.request import ModelRequest, Outcome

OK, SOFT = "ok", "soft"
ZERO = Decimal(0)


@dataclass(slots=True)
class Reservation:
    key: str
    team: str
    amount: Decimal
    day: str
    month: str


def periods(now: datetime) -> tuple[str, str]:
    return now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")


class Budgets:
    def __init__(self, policy: Policy) -> None:
        self._spent: dict[tuple[str, str, str], Decimal] = {}     # (scope, name, period) -> USD settled
        self._reserved: dict[tuple[str, str, str], Decimal] = {}  # ... -> USD held by requests in flight
        self._held: dict[str, Reservation] = {}                   # request id -> its reservation
        self.refusals = 0
        self.soft_reroutes = 0
        self.use_policy(policy)

    def use_policy(self, policy: Policy) -> None:
        self.deployments = policy.deployments
        self.by_key = {k.name: k.budget for k in policy.keys if k.budget is not None}
        self.by_team = dict(policy.team_budgets)
        self.enabled = bool(self.by_key or self.by_team)

    def applies(self, key: str, team: str | None) -> bool:
        return self.enabled and (key in self.by_key or (team is not None and team in self.by_team))

    def spent(self, scope: str, name: str, period: str) -> Decimal:
        where = (scope, name, period)
        return self._spent.get(where, ZERO) + self._reserved.get(where, ZERO)

    def admit(self, key: str, team: str | None, estimate: Decimal, now: datetime | None = None) -> str:
        """OK or SOFT for a request expected to cost ``estimate``; raises 429 over a hard limit."""
        day, month = periods(now or datetime.now(timezone.utc))
        verdict = OK
        for scope, name, budget in self._budgets(key, team):
            for period, soft, hard in ((day, budget.daily_soft_usd, budget.daily_hard_usd),
                                       (month, budget.monthly_soft_usd, budget.monthly_hard_usd)):
                spent = self.spent(scope, name, period)
                if hard is not None and spent + estimate > hard:
                    self.refusals += 1
                    what = "daily" if period == day else "monthly"
                    raise ProxyError(
                        429,
                        f"The {what} budget of {scope} '{name}' (${hard}) is used up (${spent.quantize(Decimal('0.01'))} "
                        f"spent or reserved). Ask your Laneway admin to raise it, or retry in the next {what[:-2]} period.",
                        code="insufficient_quota",
                        type="insufficient_quota",
                    )
                if soft is not None and spent + estimate > soft:
                    verdict = SOFT
        return verdict

    def reserve(self, request_id: str, key: str, team: str | None, amount: Decimal, now: datetime | None = None) -> None:
        day, month = periods(now or datetime.now(timezone.utc))
        held = Reservation(key, team or "", amount, day, month)
        previous = self._held.pop(request_id, None)  # a request id reused before its finish: keep no stale hold
        if previous is not None:
            self._shift(self._reserved, previous, -previous.amount)
        self._held[request_id] = held
        self._shift(self._reserved, held, amount)

    def finish(self, outcome: Outcome) -> None:
        """Observer: release the reservation and add the real cost (reconciliation)."""
        if not self.enabled:
            return
        held = self._held.pop(outcome.request_id, None)
        if held is not None:
            self._shift(self._reserved, held, -held.amount)
        if outcome.deployment is None or not self.applies(outcome.key_name, outcome.team):
            return
        dep = self.deployments.get(outcome.deployment)
        if dep is None:
            return
        now = datetime.now(timezone.utc)
        tokens = Tokens(outcome.input_tokens, outcome.cached_tokens, outcome.output_tokens, outcome.reasoning_tokens)
        price = active().price_at(dep.model, now, dep.provider)
        if price is not None:
            day, month = periods(now)
            self._shift(self._spent, Reservation(outcome.key_name, outcome.team or "", ZERO, day, month), cost(price, tokens))

    def seed(self, rows: Iterable[UsageRow], provider_of) -> None:
        """Spend so far this month from the ledger, so a restart does not reset budgets."""
        book = active()
        for row in rows:
            when = hour_start(row.hour)
            price = book.price_at(row.model, when, provider_of(row.deployment))
            if price is not None:
                day, month = periods(when)
                self._shift(self._spent, Reservation(row.key, row.team, ZERO, day, month), cost(price, row.tokens))

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

    @staticmethod
    def _shift(table: dict[tuple[str, str, str], Decimal], held: Reservation, amount: Decimal) -> None:
        for where in (("key", held.key, held.day), ("key", held.key, held.month),
                      ("team", held.team, held.day), ("team", held.team, held.month)):
            if where[1]:
                table[where] = table.get(where, ZERO) + amount


DEFAULT_OUTPUT_ESTIMATE = 1024  # output tokens reserved when a request sets no max_tokens


def admit_route(budgets: Budgets, route: Route, req: ModelRequest, key: str, team: str | None) -> tuple[Route, Decimal | None]:
    """Check the budgets before dispatch. Over a soft limit the route's candidates are tried
    cheapest first (unpriced ones last); returns the route to dispatch and, when re-ordered,
    the estimate that triggered it (None: the route is unchanged)."""
    out = req.max_output_tokens or DEFAULT_OUTPUT_ESTIMATE
    estimates = {}
    for name in route.candidates:
        dep = budgets.deployments.get(name)
        estimates[name] = budgets.estimate(dep, req.input_estimate, out) if dep is not None else None
    priced = [value for value in estimates.values() if value is not None]
    estimate = min(priced) if priced else ZERO
    if budgets.admit(key, team, estimate) != SOFT:
        return route, None
    budgets.soft_reroutes += 1
    order = sorted(route.candidates, key=lambda n: (estimates[n] is None, estimates[n] or ZERO))
    return replace(route, candidates=tuple(order), strategy="fallback"), estimate


def reserve_for(budgets: Budgets, request_id: str, deployment: Deployment, req: ModelRequest, key: str, team: str | None) -> None:
    """Hold the chosen deployment's estimated cost until the request finishes (see Budgets.finish)."""
    amount = budgets.estimate(deployment, req.input_estimate, req.max_output_tokens or DEFAULT_OUTPUT_ESTIMATE)
    if amount is not None:
        budgets.reserve(request_id, key, team, amount)
