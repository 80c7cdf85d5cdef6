"""What the proxy process holds for pricing: the active price book, the ledger, the budgets.

The API layer creates one ``Accounting`` per process, registers ``record`` as an observer of
finished requests, calls ``use_policy`` on reload and ``start`` / ``stop`` in its lifespan.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import Decimal

from proxy.config.schema import PRICE_STATUSES, Policy
from proxy.pricing.budgets import Budgets
from proxy.pricing.catalogue import activate, book_for, catalogue
from proxy.pricing.ledger import Ledger, UsageRow
from proxy.pricing.reports import Report, build_report, hour_range, hour_start
from proxy.pricing.schedules import cost
from proxy.store.journal import Journal
from proxy.store.usage import LedgerUnavailable, MemoryUsageStore, UsageStore, open_usage_store, state_dir

log = logging.getLogger("laneway")


def _usage_store(policy: Policy) -> UsageStore:
    try:
        return open_usage_store(policy)
    except LedgerUnavailable as exc:
        log.error("usage ledger: %s; usage is kept in memory and a restart loses it", exc)
        return MemoryUsageStore()


class Accounting:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        settings = policy.ledger
        store = _usage_store(policy)
        self.ledger = Ledger(
            store,
            self._model_of,
            flush_interval_s=settings.flush_interval_s,
            max_buffered=settings.max_buffered,
            journal=Journal(state_dir(), str(store)),
        )
        self.budgets = Budgets(policy)
        self.book = book_for(policy)
        activate(self.book)
        # Plain running totals for the metrics exporter: USD by price status since start, and
        # tokens of models that had no price when they were used (by model).
        self.spend_usd: dict[str, Decimal] = {status: Decimal(0) for status in PRICE_STATUSES}
        self.unpriced_tokens: dict[str, int] = {}
        self.ledger.on_row = self._tally
        self.record = self.ledger.record  # the observer: one list append per finished request

    def _model_of(self, deployment: str) -> str:
        dep = self.policy.deployments.get(deployment)
        return dep.model if dep is not None else deployment

    def _tally(self, row: UsageRow) -> None:
        price = self.book.price_at(row.model, hour_start(row.hour), self.provider_of(row.deployment))
        if price is None:
            self.unpriced_tokens[row.model] = self.unpriced_tokens.get(row.model, 0) + row.tokens.input + row.tokens.output
        else:
            self.spend_usd[price.status] += cost(price, row.tokens)

    def provider_of(self, deployment: str) -> str | None:
        dep = self.policy.deployments.get(deployment)
        return dep.provider if dep is not None else None

    def use_policy(self, policy: Policy) -> None:
        """A reloaded policy's prices and budgets apply to new requests and to reports (the ledger's
        store stays: changing where usage lives needs a restart)."""
        self.policy = policy
        self.book = book_for(policy)
        activate(self.book)
        self.budgets.use_policy(policy)

    async def start(self) -> None:
        """Load the catalogue (~20 ms), start the ledger's flusher, seed the budget counters.

        Seeding finishes before the first request: a request reserved earlier would create a
        counter that the seed (which only sets counters nobody has written) then leaves alone."""
        if not catalogue().loaded:
            try:
                catalogue().load()
            except Exception:
                log.exception("price catalogue: litellm's cost map could not be read; only the policy's prices apply")
        self.ledger.start()
        await self._seed_budgets()

    async def _seed_budgets(self) -> None:
        if self.budgets.enabled:
            now = datetime.now(timezone.utc)
            month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            try:
                await self.budgets.seed(await self.ledger.read(*hour_range(month, now)), self.provider_of, now)
            except Exception as exc:
                log.warning("budgets: cannot read this month's usage from the ledger (%s); counting from zero",
                            type(exc).__name__)

    async def stop(self) -> None:
        await self.ledger.stop()

    async def report(self, since: datetime, until: datetime, by: str) -> Report:
        first, last = hour_range(since, until)
        rows = await self.ledger.read(first, last)
        return build_report(rows, self.book, since, until, by, self.provider_of)
