"""Policy sections for pricing: ``prices:`` schedules, ``budget:`` limits and ``ledger:`` storage.

Money is read straight from the YAML text into ``Decimal`` (never through float), so a
price written as 0.15 is exactly 0.15 when history is re-priced.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

import yaml

from .fields import (
    mapping_of,
    redis_url,
    Context,
    Field,
    Invalid,
    Reported,
    Spec,
    is_null,
    join,
    kind,
    line_of,
    list_of,
    one_of,
    pairs,
    positive_float,
    positive_int,
    read,
    text,
)
from .schema import PRICE_STATUSES, Budget, LedgerSettings, PricePoint

_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def usd(ctx: Context, node: yaml.Node, path: str) -> Decimal:
    """A dollar amount, 0 or more, exact as written (``0.15`` is Decimal('0.15'))."""
    if not isinstance(node, yaml.ScalarNode) or node.tag not in _NUMBER_TAGS:
        raise Invalid(f"expected a number of US dollars such as 0.15, got {kind(node)}")
    try:
        value = Decimal(node.value.replace("_", ""))
    except InvalidOperation:
        raise Invalid(f"expected a plain decimal number such as 0.15, got {node.value!r}") from None
    if not value.is_finite() or value < 0:
        raise Invalid(f"must be a finite amount, 0 or more, got {node.value}")
    return value


def instant(ctx: Context, node: yaml.Node, path: str) -> datetime:
    """A UTC instant: ``2026-12-01`` (midnight UTC) or ``2026-12-01T09:00:00Z`` / with an offset."""
    if not isinstance(node, yaml.ScalarNode) or is_null(node):
        raise Invalid(f"expected a date or date-time such as 2026-12-01T00:00:00Z, got {kind(node)}")
    raw = node.value.strip()
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        value = datetime.fromisoformat(raw.replace(" ", "T", 1))
    except ValueError:
        raise Invalid(f"expected a date or date-time such as 2026-12-01T00:00:00Z, got {raw!r}") from None
    if value.tzinfo is None:
        raise Invalid(f"{raw!r} has no time zone; add Z for UTC (e.g. {raw}Z)")
    return value.astimezone(timezone.utc)


PRICE_POINT = Spec(
    {
        "effective_from": Field(instant, required=True),
        "input_per_mtok": Field(usd, required=True),
        "output_per_mtok": Field(usd, required=True),
        "cached_input_per_mtok": Field(usd),
        "reasoning_per_mtok": Field(usd),
        "status": Field(one_of(PRICE_STATUSES, "price status"), required=True),
        "source": Field(text),
    },
    PricePoint,
)


def prices(ctx: Context, node: yaml.Node, path: str) -> Mapping[str, tuple[PricePoint, ...]]:
    """model id -> its price schedule (a list of entries), sorted by ``effective_from``."""
    if is_null(node):
        return MappingProxyType({})
    if not isinstance(node, yaml.MappingNode):
        raise Invalid(f"expected a mapping of model: [price entries], got {kind(node)}")
    before = len(ctx.errors)
    result: dict[str, tuple[PricePoint, ...]] = {}
    entries = list_of(lambda c, n, p: read(c, n, p, PRICE_POINT), empty="must list at least one price entry")
    for model, _, value_node in pairs(ctx, node, path):
        model_path = join(path, model)
        try:
            records = entries(ctx, value_node, model_path)
        except Invalid as exc:
            ctx.error(line_of(value_node), model_path, str(exc))
            continue
        except Reported:
            continue
        if not all(r.ok for r in records):
            continue
        seen: dict[datetime, int] = {}
        for index, rec in enumerate(records):
            when = rec.values["effective_from"]
            line, where = rec.where("effective_from")
            if when in seen:
                ctx.error(line, where, f"another entry of {model!r} starts at the same instant (line {seen[when]}); "
                          "keep one, or move one's effective_from")
            seen[when] = line
        result[model] = tuple(sorted((r.build() for r in records), key=lambda p: p.effective_from))
    if len(ctx.errors) != before:
        raise Reported
    return MappingProxyType(result)


BUDGET = Spec(
    {
        "daily_soft_usd": Field(usd),
        "daily_hard_usd": Field(usd),
        "monthly_soft_usd": Field(usd),
        "monthly_hard_usd": Field(usd),
    },
    Budget,
)


def budget(ctx: Context, node: yaml.Node, path: str) -> Budget:
    rec = read(ctx, node, path, BUDGET)
    if not rec.ok:
        raise Reported
    for period in ("daily", "monthly"):
        soft, hard = rec.values.get(f"{period}_soft_usd"), rec.values.get(f"{period}_hard_usd")
        if soft is not None and hard is not None and soft > hard:
            line, where = rec.where(f"{period}_soft_usd")
            ctx.error(line, where, f"is above {period}_hard_usd ({hard}); the soft limit must come first")
            raise Reported
    return rec.build()


# team name (as on `keys[].team`) -> its budget
team_budgets = mapping_of(budget, "team: {daily_hard_usd: ...}")


LEDGER = Spec(
    {
        "redis_url": Field(redis_url),
        "flush_interval_s": Field(positive_float),
        "max_buffered": Field(positive_int),
        "retention_days": Field(positive_int),
    },
    LedgerSettings,
)
