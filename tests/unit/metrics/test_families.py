"""docs/metrics.md is the contract: every exported family documented with its labels and its
users, nothing documented that is not exported, and every panel and alert listed under the
metrics it reads."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import families
from proxy.metrics.exposition import render

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "metrics.md"
SUFFIXES = ("_bucket", "_sum", "_count")


def documented() -> dict[str, dict]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| `laneway_"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            assert len(cells) == 5, f"a metric row needs 5 cells: {line}"
            name, kind, labels, _, used_by = cells
            name = name.strip("`")
            assert name not in rows, f"{name} documented twice"
            rows[name] = {
                "type": kind.split("(")[0].strip(),
                "labels": {label.strip() for label in labels.split(",") if label.strip()},
                "used_by": {use.strip() for use in used_by.split(";") if use.strip() and not use.strip().startswith("template")},
            }
    return rows


def exported() -> dict[str, dict]:
    """Families as /metrics names them (counters with _total), from the registry itself."""
    out = {}
    for collector in families.REGISTRY._collector_to_names:
        kind = collector._type
        name = collector._name + ("_total" if kind == "counter" else "")
        out[name] = {"type": kind, "labels": set(collector._labelnames)}
    return out


def users() -> dict[str, set[str]]:
    """metric -> every "Dashboard: Panel" and "alert Name" whose query reads it."""
    found: dict[str, set[str]] = {}

    def note(expr: str, user: str) -> None:
        for name in re.findall(r"laneway_\w+", expr):
            for suffix in SUFFIXES:
                if name.endswith(suffix) and name[: -len(suffix)] in exported():
                    name = name[: -len(suffix)]
            found.setdefault(name, set()).add(user)

    for path in (ROOT / "grafana" / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        short = dashboard["title"].split(" / ")[-1]
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                note(target["expr"], f"{short}: {panel['title']}")
    for group in yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            note(rule["expr"], f"alert {rule['alert']}")
    return found


def test_every_exported_family_is_documented_and_every_documented_one_exported():
    docs, ours = documented(), exported()
    assert sorted(set(ours) - set(docs)) == [], "exported but missing from docs/metrics.md"
    assert sorted(set(docs) - set(ours)) == [], "documented in docs/metrics.md but never exported"
    for name, family in ours.items():
        assert docs[name]["type"] == family["type"], name
        assert docs[name]["labels"] == family["labels"], name


def test_every_documented_family_is_on_the_metrics_page():
    text = render().decode()
    helped = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    assert set(documented()) <= helped
    assert list(text_string_to_metric_families(text))  # the page parses as Prometheus text


def test_used_by_lists_exactly_the_panels_and_alerts_that_read_each_metric():
    docs, real = documented(), users()
    assert set(real) <= set(docs), f"dashboards/alerts read undocumented metrics: {sorted(set(real) - set(docs))}"
    for name, row in docs.items():
        assert row["used_by"] == real.get(name, set()), name


def test_every_label_is_explained():
    section = DOC.read_text().split("## Labels", 1)[1].split("\n## ", 1)[0]
    explained = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    common = {"route", "deployment", "lane", "status", "transport", "endpoint", "team", "kind", "attempt"}
    assert explained == common
