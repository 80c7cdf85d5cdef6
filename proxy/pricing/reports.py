"""Cost reports: usage x the price in force at that hour, split by how sure we are of the price.

``confirmed`` is priced at announced prices, ``provisional`` at prices marked provisional,
``free_preview`` is usage during a free preview, and ``unpriced`` is usage of models with
no known price at that hour: reported in tokens, never counted as $0.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

from proxy.pricing.ledger import UsageRow
from proxy.pricing.schedules import CENT, PriceBook, Tokens, cost

GROUPINGS = ("key", "team", "model", "deployment")
STATUS_COLUMN = {"announced": "confirmed", "provisional": "provisional", "free_preview": "free_preview"}


@dataclass(slots=True)
class ReportLine:
    group: str
    tokens: Tokens = field(default_factory=Tokens)
    confirmed: Decimal = Decimal(0)
    provisional: Decimal = Decimal(0)
    free_preview: Decimal = Decimal(0)
    unpriced: Tokens = field(default_factory=Tokens)
    unpriced_models: set[str] = field(default_factory=set)

    @property
    def total(self) -> Decimal:
        return self.confirmed + self.provisional + self.free_preview

    def as_dict(self) -> dict:
        return {
            "group": self.group,
            "tokens": self.tokens.as_dict(),
            "usd": {
                "confirmed": str(to_cents(self.confirmed)),
                "provisional": str(to_cents(self.provisional)),
                "free_preview": str(to_cents(self.free_preview)),
                "total": str(to_cents(self.total)),
                "exact_total": str(self.total),
            },
            "unpriced_tokens": self.unpriced.as_dict(),
            "unpriced_models": sorted(self.unpriced_models),
        }


@dataclass(slots=True)
class Report:
    since: datetime
    until: datetime
    by: str
    lines: list[ReportLine]
    totals: ReportLine

    def as_dict(self) -> dict:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "by": self.by,
            "lines": [line.as_dict() for line in self.lines],
            "totals": self.totals.as_dict(),
        }


def to_cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def hour_start(hour: int) -> datetime:
    return datetime.fromtimestamp(hour * 3600, timezone.utc)


def check_period(since: datetime, until: datetime, max_days: int) -> None:
    """Refuse (ValueError) an empty period or one longer than the ledger keeps usage (``max_days``):
    a report reads the ledger hour by hour, so an unbounded period would hold a worker for hours."""
    if since >= until:
        raise ValueError("since must be before until")
    if until - since > timedelta(days=max_days):
        raise ValueError(f"a report covers at most {max_days} days (ledger.retention_days: the ledger keeps "
                         f"nothing older); this one spans {(until - since) / timedelta(days=1):.1f} days, ask for a shorter one")


def hour_range(since: datetime, until: datetime) -> tuple[int, int]:
    """Ledger hours overlapping [since, until): the ledger's resolution is one hour."""
    first = int(since.timestamp() // 3600)
    last = int((until - timedelta(microseconds=1)).timestamp() // 3600)
    return first, last


def build_report(
    rows: Iterable[UsageRow],
    book: PriceBook,
    since: datetime,
    until: datetime,
    by: str,
    provider_of: Callable[[str], str | None] = lambda deployment: None,
) -> Report:
    """Price each hour's usage at the entry in force at the start of that hour."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}; use one of {', '.join(GROUPINGS)}")
    lines: dict[str, ReportLine] = {}
    totals = ReportLine("total")
    for row in rows:
        group = getattr(row, by) or "(none)"
        line = lines.get(group)
        if line is None:
            line = lines[group] = ReportLine(group)
        price = book.price_at(row.model, hour_start(row.hour), provider_of(row.deployment))
        for target in (line, totals):
            target.tokens.add(row.tokens)
            if price is None:
                target.unpriced.add(row.tokens)
                target.unpriced_models.add(row.model)
            else:
                column = STATUS_COLUMN[price.status]
                setattr(target, column, getattr(target, column) + cost(price, row.tokens))
    ordered = sorted(lines.values(), key=lambda line: (-line.total, line.group))
    return Report(since, until, by, ordered, totals)


@dataclass(slots=True)
class Reprice:
    """What a new schedule entry would change: the affected usage priced before and after."""

    model: str
    before: ReportLine
    after: ReportLine

    @property
    def change(self) -> Decimal:
        return self.after.total - self.before.total


def reprice(rows: Iterable[UsageRow], old: PriceBook, new: PriceBook, model: str, since: datetime, until: datetime,
            provider_of: Callable[[str], str | None] = lambda deployment: None) -> Reprice:
    affected = [row for row in rows if row.model == model]
    before = build_report(affected, old, since, until, "model", provider_of).totals
    after = build_report(affected, new, since, until, "model", provider_of).totals
    return Reprice(model, before, after)


def parse_instant(text: str) -> datetime:
    """``2026-11-01`` (midnight UTC), ``2026-11-01T09:00`` (UTC) or with ``Z`` / an offset."""
    value = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
