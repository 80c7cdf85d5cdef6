"""``laneway cost report`` and ``laneway cost reprice``: spend from the ledger, and what a new price would change.

Both read usage from the ledger's store (the policy's ``ledger.redis_url`` or ``store.redis_url``,
else the SQLite file the proxy keeps without Redis) and price it with the policy's schedules
over litellm's catalogue. ``reprice --apply`` adds the new entry to the policy file as text, so
the user's comments and layout survive.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml

from proxy.config import PolicyError, load_policy, parse_policy
from proxy.config.schema import Policy, PricePoint
from proxy.pricing.catalogue import book_for, catalogue
from proxy.pricing.ledger import UsageRow, rows_from_fields
from proxy.pricing.reports import (GROUPINGS, Report, ReportLine, build_report, check_period, hour_range, parse_instant,
                                   reprice, to_cents)
from proxy.store.usage import LedgerUnavailable, UsageStore, open_usage_store, sqlite_path

READ_TIMEOUT_S = 5.0  # a one-off read: a busy Redis may take its time


def add_commands(commands: argparse._SubParsersAction) -> None:
    cost = commands.add_parser("cost", help="spend reports and re-pricing from the usage ledger")
    sub = cost.add_subparsers(dest="cost_command", required=True)

    report = sub.add_parser("report", help="confirmed, provisional and unpriced spend over a period")
    _policy_arg(report)
    report.add_argument("--since", type=_instant, help="start (ISO date or date-time, UTC; default: the start of the current month)")
    report.add_argument("--until", type=_instant, help="end, exclusive (default: now)")
    report.add_argument("--by", choices=GROUPINGS, default="model")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")

    rp = sub.add_parser("reprice", help="preview (or --apply) a newly announced price against past usage")
    _policy_arg(rp)
    rp.add_argument("--model", required=True, help="upstream model id, as in the deployments' `model:`")
    rp.add_argument("--input", required=True, type=_usd, help="USD per million input tokens")
    rp.add_argument("--output", required=True, type=_usd, help="USD per million output tokens")
    rp.add_argument("--cached-input", type=_usd, help="USD per million cached input tokens (default: the input price)")
    rp.add_argument("--reasoning", type=_usd, help="USD per million reasoning tokens (default: the output price)")
    rp.add_argument("--from", dest="effective_from", required=True, type=_instant, help="in force from (UTC)")
    rp.add_argument("--until", type=_instant, help="end of the usage to re-price (default: now)")
    rp.add_argument("--status", choices=("announced", "provisional", "free_preview"), default="announced")
    rp.add_argument("--source", default="", help="where the price comes from (kept in the policy)")
    rp.add_argument("--apply", action="store_true", help="also add the entry to the policy's prices: section")


def run(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    until = args.until or datetime.now(timezone.utc)
    keep = policy.ledger.retention_days
    if args.cost_command == "report":
        since = args.since
        if since is None:
            since = until.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            print(f"since {since.date().isoformat()} (the current month, UTC; --since to change)", file=sys.stderr)
    else:
        if args.effective_from >= until:  # announced ahead: no usage it applies to yet, but it can be recorded
            return _record_future_price(args)
        if args.effective_from.minute or args.effective_from.second or args.effective_from.microsecond:
            print(f"note: the ledger counts usage by the hour, so the whole hour from "
                  f"{args.effective_from.replace(minute=0, second=0, microsecond=0).isoformat()} is re-priced; "
                  "use an hour boundary for an exact split", file=sys.stderr)
        # a price re-prices all the usage since it took effect: as far back as the ledger keeps it
        since = max(args.effective_from, until - timedelta(days=keep))
    try:
        check_period(since, until, keep)
    except ValueError as exc:
        print(f"--since/--from .. --until: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_usage_store(policy, timeout_s=READ_TIMEOUT_S, create=False)
    except LedgerUnavailable as exc:
        print(f"{args.policy}: {exc} (without Redis the proxy keeps usage in {sqlite_path(policy.store)}, relative to "
              "where it runs: set store.sqlite_path or $LANEWAY_STATE_DIR alike for both; or ask the running proxy: "
              "GET /admin/cost with an admin key)", file=sys.stderr)
        return 2
    catalogue().load()
    try:
        rows = asyncio.run(_read(store, since, until))
    except (LedgerUnavailable, OSError) as exc:
        print(f"cannot read the ledger at {store}: {exc}", file=sys.stderr)
        return 1
    if args.cost_command == "report":
        report = build_report(rows, book_for(policy), since, until, args.by, _provider_of(policy))
        print(_render(report, args.format), end="")
        return 0
    return _reprice(args, policy, rows, since, until)


def _entry(args: argparse.Namespace) -> PricePoint:
    return PricePoint(args.effective_from, args.input, args.output, args.cached_input, args.reasoning, args.status, args.source)


def _reprice(args: argparse.Namespace, policy: Policy, rows: list[UsageRow], since: datetime, until: datetime) -> int:
    old = book_for(policy)
    result = reprice(rows, old, old.with_entry(args.model, _entry(args)), args.model, since, until, _provider_of(policy))
    print(f"{args.model}: usage from {since.isoformat()} to {until.isoformat()} "
          f"({result.after.tokens.input} input, {result.after.tokens.output} output tokens)")
    for label, line in (("before", result.before), ("after", result.after)):
        print(f"  {label:6}  confirmed ${to_cents(line.confirmed)}  provisional ${to_cents(line.provisional)}  "
              f"free preview ${to_cents(line.free_preview)}  unpriced tokens {line.unpriced.input + line.unpriced.output}")
    print(f"  change  ${to_cents(result.change)} (exact: {result.change})")
    return _apply(args) if args.apply else _preview_only()


def _record_future_price(args: argparse.Namespace) -> int:
    print(f"{args.model}: in force from {args.effective_from.isoformat()}, later than the usage in the ledger: "
          "nothing to re-price yet")
    return _apply(args) if args.apply else _preview_only()


def _preview_only() -> int:
    print("preview only: add --apply to record this price in the policy")
    return 0


def _apply(args: argparse.Namespace) -> int:
    entry = _entry(args)
    try:
        new_text = add_price_entry(Path(args.policy).read_text(encoding="utf-8"), args.model, entry)
        parse_policy(new_text, source=args.policy)
    except PolicyError as exc:
        print(f"not applied: the edited policy would not load:\n{exc}", file=sys.stderr)
        return 1
    _write_atomically(Path(args.policy), new_text)
    print(f"applied: {args.policy} now prices {args.model} from {args.effective_from.isoformat()} "
          "(a running proxy picks it up on reload)")
    return 0


async def _read(store: UsageStore, since: datetime, until: datetime) -> list[UsageRow]:
    first, last = hour_range(since, until)
    show = sys.stderr.isatty() and last - first > 256

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\rreading usage: {done}/{total} hours", end="" if done < total else "\n", file=sys.stderr)

    try:
        return rows_from_fields(await store.read(first, last, progress))
    finally:
        await store.close()


def _render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report.as_dict(), indent=2) + "\n"
    header = [report.by, "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "requests",
              "confirmed_usd", "provisional_usd", "free_preview_usd", "total_usd", "unpriced_tokens", "unpriced_models"]
    rows = [_cells(line) for line in report.lines] + [_cells(report.totals)]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return out.getvalue()
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"{report.since.isoformat()} .. {report.until.isoformat()} by {report.by}"]
    for index, row in enumerate([header, *rows]):
        if index == len(rows):
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(str(cell).rjust(w) if i else str(cell).ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    if report.totals.unpriced_models:
        lines.append(f"unpriced: {', '.join(sorted(report.totals.unpriced_models))} have no price; add them under "
                     "`prices:` in the policy (their usage is not counted in any dollar column)")
    return "\n".join(lines) + "\n"


def _cells(line: ReportLine) -> list:
    t = line.tokens
    return [line.group, t.input, t.cached, t.output, t.reasoning, t.requests, to_cents(line.confirmed),
            to_cents(line.provisional), to_cents(line.free_preview), to_cents(line.total),
            line.unpriced.input + line.unpriced.output, " ".join(sorted(line.unpriced_models))]


_TOP_KEY = re.compile(r"^[^\s#-][^:]*:")


def add_price_entry(text: str, model: str, entry: PricePoint) -> str:
    """``text`` with one more entry in ``prices: -> model``, added as a line so comments stay put."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    item = _flow_entry(entry)
    start = next((i for i, line in enumerate(lines) if re.match(r"^prices\s*:\s*(#.*)?$", line.rstrip("\n"))), None)
    if start is None:
        return "".join(lines) + f"prices:\n  {_key(model)}:\n    - {item}\n"
    end = next((i for i in range(start + 1, len(lines)) if _TOP_KEY.match(lines[i])), len(lines))
    model_re = re.compile(r"^(\s+)(['\"]?)" + re.escape(model) + r"\2\s*:\s*(#.*)?$")
    for i in range(start + 1, end):
        match = model_re.match(lines[i].rstrip("\n"))
        if match is None:
            continue
        indent = len(match.group(1))
        last, item_indent = i, None
        for j in range(i + 1, end):
            stripped = lines[j].strip()
            if not stripped or stripped.startswith("#"):
                continue
            current = len(lines[j]) - len(lines[j].lstrip())
            if current < indent or (current == indent and not stripped.startswith("-")):
                break
            if item_indent is None and stripped.startswith("-"):
                item_indent = current
            last = j
        item_indent = indent + 2 if item_indent is None else item_indent
        for j in range(i + 1, last + 1):
            if _starts_at(lines[j], entry.effective_from):
                lines[j] = " " * item_indent + "# superseded by `laneway cost reprice`: " + lines[j].lstrip()
        lines.insert(last + 1, " " * item_indent + f"- {item}\n")
        return "".join(lines)
    body_indent = next((len(lines[i]) - len(lines[i].lstrip()) for i in range(start + 1, end)
                        if lines[i].strip() and not lines[i].lstrip().startswith("#")), 2)
    insert_at = end
    while insert_at > start + 1 and (not lines[insert_at - 1].strip() or lines[insert_at - 1].startswith("#")):
        insert_at -= 1
    lines[insert_at:insert_at] = [" " * body_indent + f"{_key(model)}:\n", " " * (body_indent + 2) + f"- {item}\n"]
    return "".join(lines)


def _starts_at(line: str, when: datetime) -> bool:
    """Whether ``line`` is a one-line entry (``- {effective_from: ...}``) starting at ``when``."""
    stripped = line.strip()
    if not stripped.startswith("- {"):
        return False
    try:
        value = yaml.safe_load(stripped[2:])
    except yaml.YAMLError:
        return False
    start = value.get("effective_from") if isinstance(value, dict) else None
    try:
        return start is not None and parse_instant(str(start)) == when
    except ValueError:
        return False


def _flow_entry(entry: PricePoint) -> str:
    parts = [f'effective_from: "{entry.effective_from.strftime("%Y-%m-%dT%H:%M:%SZ")}"',
             f"input_per_mtok: {entry.input_per_mtok}"]
    if entry.cached_input_per_mtok is not None:
        parts.append(f"cached_input_per_mtok: {entry.cached_input_per_mtok}")
    parts.append(f"output_per_mtok: {entry.output_per_mtok}")
    if entry.reasoning_per_mtok is not None:
        parts.append(f"reasoning_per_mtok: {entry.reasoning_per_mtok}")
    parts.append(f"status: {entry.status}")
    if entry.source:
        parts.append(f"source: {json.dumps(entry.source)}")
    return "{" + ", ".join(parts) + "}"


def _key(model: str) -> str:
    return model if re.fullmatch(r"[A-Za-z0-9_./-]+", model) else json.dumps(model)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.laneway-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _provider_of(policy: Policy):
    return lambda name: policy.deployments[name].provider if name in policy.deployments else None


def _policy_arg(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("LANEWAY_POLICY")
    parser.add_argument("--policy", required=default is None, default=default, help="policy YAML file ($LANEWAY_POLICY)")


def _instant(text: str) -> datetime:
    try:
        return parse_instant(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or date-time (e.g. 2026-11-01T00:00Z)") from None


def _usd(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of US dollars (e.g. 0.15)") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value
