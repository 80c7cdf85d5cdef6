"""Price schedules, cost reports, re-pricing, the catalogue and the pricing sections of the policy."""
from __future__ import annotations

import textwrap
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from proxy.config import PolicyError, parse_policy
from proxy.config.schema import PricePoint
from proxy.pricing import price_of
from proxy.pricing.catalogue import activate, book_for, catalogue, per_mtok
from proxy.pricing.ledger import UsageRow
from proxy.pricing.reports import build_report, reprice, to_cents
from proxy.pricing.schedules import PriceBook, Schedule, Tokens, cost

UTC = timezone.utc
BASE = """\
version: 1
auth: open
deployments:
  - name: spark
    provider: cerebras
    model: spark-preview
    base_url: https://api.cerebras.ai/v1
  - name: mini
    provider: openai
    model: gpt-4o-mini
    base_url: https://api.openai.com/v1
"""


def policy(extra: str):
    return parse_policy(BASE + textwrap.dedent(extra), env={})


def errors(extra: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        policy(extra)
    return [str(e) for e in info.value.errors]


def hour_of(when: datetime) -> int:
    return int(when.timestamp() // 3600)


def row(when: datetime, model: str = "spark-preview", inp: int = 0, out: int = 0, cached: int = 0, reasoning: int = 0,
        key: str = "alice", team: str = "platform") -> UsageRow:
    return UsageRow(hour_of(when), "spark", model, key, team, Tokens(inp, cached, out, reasoning, 1))


def point(when: str, inp: str, out: str, status: str = "announced", **extra) -> PricePoint:
    return PricePoint(datetime.fromisoformat(when), Decimal(inp), Decimal(out), status=status, **extra)


# --- arithmetic and lookup ---------------------------------------------------------------


def test_cost_prices_cached_and_reasoning_tokens_inside_input_and_output():
    price = point("2026-01-01T00:00:00+00:00", "1.25", "10", cached_input_per_mtok=Decimal("0.125"),
                  reasoning_per_mtok=Decimal("12"))
    # 1000 input of which 800 cached; 500 output of which 300 reasoning.
    expected = Decimal("200") * Decimal("1.25") + 800 * Decimal("0.125") + 200 * 10 + 300 * 12
    assert cost(price, Tokens(1000, 800, 500, 300)) == expected / 1_000_000
    plain = point("2026-01-01T00:00:00+00:00", "1.25", "10")  # no separate rates: cached = input, reasoning = output
    assert cost(plain, Tokens(1000, 800, 500, 300)) == (1000 * Decimal("1.25") + 500 * 10) / 1_000_000


def test_schedule_lookup_at_boundaries():
    schedule = Schedule("m", [point("2026-12-01T00:00:00+00:00", "2", "8"), point("2026-11-01T00:00:00+00:00", "1", "4")])
    assert schedule.at(datetime(2026, 10, 31, 23, 59, tzinfo=UTC)) is None
    assert schedule.at(datetime(2026, 11, 1, tzinfo=UTC)).input_per_mtok == 1
    assert schedule.at(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)).input_per_mtok == 1
    assert schedule.at(datetime(2026, 12, 1, tzinfo=UTC)).input_per_mtok == 2


def test_price_boundary_inside_the_reporting_window():
    book = PriceBook({"spark-preview": Schedule("spark-preview", [
        point("2026-11-01T00:00:00+00:00", "0.60", "1.20", "provisional"),
        point("2026-11-20T12:00:00+00:00", "0.25", "0.69", "announced"),
    ])})
    before = datetime(2026, 11, 20, 11, 30, tzinfo=UTC)   # hour 11: provisional
    after = datetime(2026, 11, 20, 12, 5, tzinfo=UTC)     # hour 12: announced
    rows = [row(before, inp=1_000_000, out=500_000), row(after, inp=2_000_000, out=1_000_000)]
    report = build_report(rows, book, datetime(2026, 11, 20, 11, tzinfo=UTC), datetime(2026, 11, 20, 13, tzinfo=UTC), "model")
    line = report.lines[0]
    assert line.provisional == Decimal("0.60") + Decimal("0.60")             # 1M in at 0.60 + 0.5M out at 1.20
    assert line.confirmed == Decimal("0.50") + Decimal("0.69")              # 2M in at 0.25 + 1M out at 0.69
    assert line.tokens.input == 3_000_000 and line.unpriced.input == 0


def test_provisional_replaced_by_announced_reprices_history_to_the_cent():
    """A preview runs for weeks at a guessed price; the real one is announced, back-dated to launch."""
    launch = "2026-11-01T00:00:00+00:00"
    book = PriceBook({"spark-preview": Schedule("spark-preview", [point(launch, "0.60", "1.20", "provisional")])})
    start = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [row(start + timedelta(hours=h), inp=123_457 + h, out=9_871 + 3 * h, cached=1000) for h in range(0, 24 * 20, 7)]
    since, until = start, start + timedelta(days=21)
    old = build_report(rows, book, since, until, "model").totals
    assert old.confirmed == 0 and old.provisional > 0

    announced = point(launch, "0.25", "0.69", "announced", cached_input_per_mtok=Decimal("0.025"))
    new_book = book.with_entry("spark-preview", announced)
    result = reprice(rows, book, new_book, "spark-preview", since, until)
    # The same figure computed independently, in integer micro-dollars per token (exact).
    total_in = sum(r.tokens.input for r in rows)
    total_cached = sum(r.tokens.cached for r in rows)
    total_out = sum(r.tokens.output for r in rows)
    exact = (Decimal(total_in - total_cached) * Decimal("0.25") + total_cached * Decimal("0.025")
             + total_out * Decimal("0.69")) / 1_000_000
    assert result.after.confirmed == exact and result.after.provisional == 0
    assert to_cents(result.after.total) == exact.quantize(Decimal("0.01"))
    assert result.before.provisional == old.provisional
    assert result.change == exact - old.provisional


def test_future_dated_price_takes_effect_without_restart():
    soon = datetime.now(UTC) + timedelta(seconds=1)
    loaded = policy(f"""\
        prices:
          spark-preview:
            - {{effective_from: 2026-01-01, input_per_mtok: 1, output_per_mtok: 2, status: provisional}}
            - {{effective_from: "{soon.isoformat()}", input_per_mtok: 3, output_per_mtok: 4, status: announced}}
        """)
    activate(book_for(loaded))
    spark = loaded.deployments["spark"]
    assert price_of(spark, 1_000_000, 1_000_000) == Decimal(3)
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    assert price_of(spark, 1_000_000, 1_000_000) == Decimal(7)  # same book, same process, new price


def test_unpriced_model_is_flagged_not_free():
    book = PriceBook({})
    when = datetime(2026, 11, 2, 5, tzinfo=UTC)
    report = build_report([row(when, model="mystery", inp=1000, out=10)], book, when, when + timedelta(hours=1), "key")
    totals = report.totals
    assert totals.unpriced_models == {"mystery"} and totals.unpriced.input == 1000
    assert totals.total == 0 and totals.confirmed == 0
    activate(book)
    assert price_of(policy("").deployments["spark"], 10, 10) is None


def test_catalogue_defaults_from_litellm_and_policy_override():
    catalogue().load()
    assert per_mtok(1.5e-07) == Decimal("0.15")
    loaded = policy("""\
        prices:
          spark-preview:
            - {effective_from: 2026-01-01, input_per_mtok: 0.6, output_per_mtok: 1.2, status: provisional, source: guess}
        """)
    book = book_for(loaded)
    now = datetime.now(UTC)
    mini = book.price_at("gpt-4o-mini", now, "openai")
    assert (mini.input_per_mtok, mini.output_per_mtok, mini.status) == (Decimal("0.15"), Decimal("0.6"), "announced")
    assert mini.source.startswith("litellm")
    spark = book.price_at("spark-preview", now, "cerebras")
    assert (spark.input_per_mtok, spark.status, spark.source) == (Decimal("0.6"), "provisional", "guess")
    overridden = book_for(policy("""\
        prices:
          gpt-4o-mini:
            - {effective_from: 2026-01-01, input_per_mtok: 9, output_per_mtok: 9, status: announced}
        """))
    assert overridden.price_at("gpt-4o-mini", now, "openai").input_per_mtok == 9


# --- policy validation --------------------------------------------------------------------


def test_prices_section_parses_decimals_exactly():
    loaded = policy("""\
        prices:
          spark-preview:
            - effective_from: "2026-12-01T09:00:00+02:00"
              input_per_mtok: 0.1
              cached_input_per_mtok: 0.01
              output_per_mtok: 0.3
              reasoning_per_mtok: 0.35
              status: announced
              source: price page
            - {effective_from: 2026-11-01, input_per_mtok: 0, output_per_mtok: 0, status: free_preview}
        """)
    first, second = loaded.prices["spark-preview"]
    assert first.status == "free_preview" and first.effective_from == datetime(2026, 11, 1, tzinfo=UTC)
    assert second.effective_from == datetime(2026, 12, 1, 7, tzinfo=UTC)
    assert (second.input_per_mtok, second.cached_input_per_mtok, second.reasoning_per_mtok) == (
        Decimal("0.1"), Decimal("0.01"), Decimal("0.35"))


@pytest.mark.parametrize("entry, field, message", [
    ("{effective_from: 2026-12-01, input_per_mtok: -1, output_per_mtok: 1, status: announced}",
     "prices.m[0].input_per_mtok", "0 or more"),
    ("{effective_from: 2026-12-01, input_per_mtok: 1, output_per_mtok: 1, status: guessed}",
     "prices.m[0].status", "unknown price status 'guessed'"),
    ("{effective_from: '2026-12-01T10:00:00', input_per_mtok: 1, output_per_mtok: 1, status: announced}",
     "prices.m[0].effective_from", "no time zone"),
    ("{effective_from: soon, input_per_mtok: 1, output_per_mtok: 1, status: announced}",
     "prices.m[0].effective_from", "date or date-time"),
    ("{input_per_mtok: 1, output_per_mtok: 1, status: announced}", "prices.m[0].effective_from", "missing required"),
    ("{effective_from: 2026-12-01, input_per_mtok: 1, output_per_mtok: 1, status: announced, colour: red}",
     "prices.m[0].colour", "unknown key"),
])
def test_bad_price_entries_report_line_and_field(entry, field, message):
    found = errors(f"prices:\n  m:\n    - {entry}\n")
    line = len(BASE.splitlines()) + 3
    assert any(e.startswith(f"<string>:{line}: {field}:") and message in e for e in found), found


def test_duplicate_effective_from_and_inverted_budget_are_rejected():
    found = errors("""\
        prices:
          m:
            - {effective_from: 2026-12-01, input_per_mtok: 1, output_per_mtok: 1, status: announced}
            - {effective_from: "2026-12-01T00:00:00Z", input_per_mtok: 2, output_per_mtok: 2, status: announced}
        team_budgets:
          platform: {daily_soft_usd: 10, daily_hard_usd: 5}
        """)
    assert any("prices.m.effective_from" in e or "prices.m[1].effective_from" in e for e in found), found
    assert any("team_budgets.platform.daily_soft_usd" in e and "above daily_hard_usd" in e for e in found), found


def test_budgets_ledger_and_admin_flag_load():
    loaded = policy("""\
        keys:
          - {name: ops, sha256: "%s", admin: true, budget: {monthly_hard_usd: 100.5}}
        team_budgets:
          platform: {daily_soft_usd: 1, daily_hard_usd: 2}
        ledger: {redis_url: "redis://127.0.0.1:1/0", flush_interval_s: 0.5, max_buffered: 10}
        """ % ("a" * 64))
    key = loaded.keys[0]
    assert key.admin and key.budget.monthly_hard_usd == Decimal("100.5")
    assert loaded.team_budgets["platform"].daily_hard_usd == 2
    assert (loaded.ledger.redis_url, loaded.ledger.flush_interval_s, loaded.ledger.max_buffered) == (
        "redis://127.0.0.1:1/0", 0.5, 10)
    assert any("ledger.redis_url" in e for e in errors("ledger: {redis_url: http://x}\n"))
