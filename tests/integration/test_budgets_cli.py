"""Budgets through the running proxy, and the `laneway cost` commands against a real Redis ledger."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import openai
import pytest

from proxy.cli import main
from proxy.config import load_policy
from tests.redis_support import RedisServer
from tests.support import proxy_from_yaml, simulator
from tests.integration.test_ledger import redis_totals, wait_for

ALICE, BOB, CAROL = "lw-alice-budget", "lw-bob-budget", "lw-carol-budget"
MESSAGES = [{"role": "user", "content": "a short question"}]

POLICY = """\
version: 1
auth: keys
keys:
  - {{name: alice, sha256: {alice}, team: platform, budget: {{daily_soft_usd: 0}}}}
  - {{name: bob, sha256: {bob}}}
  - {{name: carol, sha256: {carol}, team: research}}
team_budgets:
  research: {{daily_hard_usd: 0.001}}
deployments:
  - {{name: premium, provider: openai, model: sim-codex, base_url: {sim}/v1}}
  - {{name: budget-lane, provider: openai, model: sim-spark, base_url: {sim}/v1}}
routes:
  - name: codex
    candidates: [premium, budget-lane]
ledger:
  flush_interval_s: 0.05
{redis}
# Prices: keep this comment (reprice --apply must not eat it).
prices:
  sim-codex:   # the premium model
    - {{effective_from: 2020-01-01, input_per_mtok: 10, output_per_mtok: 30, status: announced}}
  sim-spark:
    # preview: no price announced yet
    - {{effective_from: 2020-01-01, input_per_mtok: 0.6, output_per_mtok: 1.2, status: provisional, source: guess}}
"""


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def sim():
    with simulator("instant") as server:
        yield server


def write_policy(tmp_path, sim, redis_url: str | None = None):
    text = POLICY.format(alice=sha(ALICE), bob=sha(BOB), carol=sha(CAROL), sim=sim.url,
                         redis=f"  redis_url: {redis_url}" if redis_url else "")
    return proxy_from_yaml(tmp_path, text), tmp_path / "policy.yaml"


def client(proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)


def test_soft_budget_prefers_the_cheaper_candidate(tmp_path, sim):
    proxy, _ = write_policy(tmp_path, sim)
    with proxy:
        raw = client(proxy, BOB).chat.completions.with_raw_response.create(model="codex", messages=MESSAGES, max_tokens=5)
        assert raw.headers["x-laneway-deployment"] == "premium"  # no budget: the route's first choice
        raw = client(proxy, ALICE).chat.completions.with_raw_response.create(model="codex", messages=MESSAGES, max_tokens=5)
        assert raw.headers["x-laneway-deployment"] == "budget-lane"
        assert raw.headers["x-laneway-route-reason"].startswith("budget_soft:cheapest_first")
        assert raw.parse().usage.completion_tokens == 5


def test_hard_budget_answers_insufficient_quota(tmp_path, sim):
    proxy, _ = write_policy(tmp_path, sim)
    with proxy:
        carol = client(proxy, CAROL)
        ok = carol.chat.completions.create(model="premium", messages=MESSAGES, max_tokens=20)
        spent = (Decimal(ok.usage.prompt_tokens) * 10 + Decimal(ok.usage.completion_tokens) * 30) / 1_000_000
        assert Decimal("0.0001") < spent < Decimal("0.001")
        with pytest.raises(openai.RateLimitError) as info:
            carol.chat.completions.create(model="premium", messages=MESSAGES, max_tokens=20)
        assert info.value.status_code == 429
        error = info.value.body
        assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
        assert "research" in error["message"] and "budget" in error["message"]
        # Another team is unaffected.
        assert client(proxy, BOB).chat.completions.create(model="premium", messages=MESSAGES, max_tokens=20).usage


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cost_report_and_reprice_apply(tmp_path, sim, capsys):
    httpx.post(sim.url + "/sim/reset").raise_for_status()
    with RedisServer() as server:
        proxy, path = write_policy(tmp_path, sim, server.url)
        with proxy:
            for key in (ALICE, BOB, CAROL):
                client(proxy, key).chat.completions.create(model="codex", messages=MESSAGES, max_tokens=7)
            stats = httpx.get(sim.url + "/sim/stats").json()
            wait_for(lambda: redis_totals(server.url).get("requests") == 3)
        since = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:00Z")

        code, out, _ = run_cli(capsys, "cost", "report", "--policy", str(path), "--since", since, "--by", "key",
                               "--format", "json")
        assert code == 0
        report = json.loads(out)
        assert report["totals"]["tokens"]["input"] == stats["input_tokens"]
        assert report["totals"]["tokens"]["output"] == stats["output_tokens"] == 21
        assert {line["group"] for line in report["lines"]} == {"alice", "bob", "carol"}
        spark = stats["by_model"]["sim-spark"]
        codex = stats["by_model"]["sim-codex"]
        provisional = (Decimal(spark["input_tokens"]) * Decimal("0.6") + spark["output_tokens"] * Decimal("1.2")) / 1_000_000
        confirmed = (Decimal(codex["input_tokens"]) * 10 + codex["output_tokens"] * 30) / 1_000_000
        assert Decimal(report["totals"]["usd"]["exact_total"]) == provisional + confirmed

        code, out, _ = run_cli(capsys, "cost", "report", "--policy", str(path), "--since", since, "--by", "model",
                               "--format", "csv")
        assert code == 0 and out.splitlines()[0].startswith("model,input_tokens")
        assert any(line.startswith("sim-spark,") for line in out.splitlines())
        code, out, _ = run_cli(capsys, "cost", "report", "--policy", str(path), "--since", since)
        assert code == 0 and "sim-codex" in out and "total" in out

        # The preview's price is announced, back-dated to its launch: preview, then apply.
        args = ("cost", "reprice", "--policy", str(path), "--model", "sim-spark", "--input", "0.25", "--output", "0.69",
                "--from", "2020-01-01", "--source", "price page")
        code, out, _ = run_cli(capsys, *args)
        exact = (Decimal(spark["input_tokens"]) * Decimal("0.25") + spark["output_tokens"] * Decimal("0.69")) / 1_000_000
        assert code == 0 and f"change  ${(exact - provisional).quantize(Decimal('0.01'))}" in out
        assert f"(exact: {exact - provisional})" in out and "preview only" in out
        before = path.read_text()
        assert "sim-spark" in before and path.read_text() == before

        code, out, _ = run_cli(capsys, *args, "--apply")
        assert code == 0 and "applied" in out
        after = path.read_text()
        assert "# Prices: keep this comment" in after and "# preview: no price announced yet" in after
        assert after.startswith(before.split("  sim-spark:")[0])
        assert "# superseded by `laneway cost reprice`: - {effective_from: 2020-01-01, input_per_mtok: 0.6" in after
        schedule = load_policy(path).prices["sim-spark"]
        assert [(p.status, p.input_per_mtok, p.source) for p in schedule] == [("announced", Decimal("0.25"), "price page")]

        code, out, _ = run_cli(capsys, "cost", "report", "--policy", str(path), "--since", since, "--format", "json")
        totals = json.loads(out)["totals"]["usd"]
        assert Decimal(totals["exact_total"]) == exact + confirmed
        assert totals["provisional"] == "0.00"


def test_cost_commands_explain_a_missing_ledger(tmp_path, sim, capsys):
    """Without Redis a proxy that never ran here left no ledger file: say where it would be."""
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(alice=sha(ALICE), bob=sha(BOB), carol=sha(CAROL), sim=sim.url, redis=""))
    code, _, err = run_cli(capsys, "cost", "report", "--policy", str(path), "--since", "2026-01-01")
    assert code == 2 and "GET /admin/cost" in err and "no usage ledger at" in err and "usage.sqlite3" in err


def test_reprice_apply_adds_a_model_and_keeps_comments(tmp_path):
    from proxy.cli_cost import add_price_entry
    from proxy.config.schema import PricePoint

    text = "version: 1\n# top\nprices:\n  a:\n    - {effective_from: 2026-01-01, input_per_mtok: 1, output_per_mtok: 1, status: announced}\n\n# trailing\nauth: open\n"
    entry = PricePoint(datetime(2026, 12, 1, tzinfo=timezone.utc), Decimal("0.5"), Decimal("2"), status="announced")
    out = add_price_entry(text, "b", entry)
    assert out.splitlines()[5:7] == ["  b:", '    - {effective_from: "2026-12-01T00:00:00Z", input_per_mtok: 0.5, '
                                     'output_per_mtok: 2, status: announced}']
    assert "# trailing" in out and "# top" in out
    again = add_price_entry(out, "a", entry)
    assert again.splitlines()[5].startswith('    - {effective_from: "2026-12-01')
    fresh = add_price_entry("version: 1\nauth: open\n", "c", entry)
    assert fresh.endswith('prices:\n  c:\n    - {effective_from: "2026-12-01T00:00:00Z", input_per_mtok: 0.5, '
                          'output_per_mtok: 2, status: announced}\n')


def test_report_defaults_to_this_month_and_a_future_price_can_be_recorded(tmp_path, sim, capsys):
    """Issue 15: `cost report` needs no --since; a price announced ahead is recorded (nothing to re-price yet);
    a price starting inside an hour says that the ledger re-prices that whole hour."""
    with RedisServer() as server:
        proxy, path = write_policy(tmp_path, sim, server.url)
        with proxy:
            client(proxy, BOB).chat.completions.create(model="codex", messages=MESSAGES, max_tokens=3)
            wait_for(lambda: redis_totals(server.url).get("requests") == 1)
        code, out, err = run_cli(capsys, "cost", "report", "--policy", str(path), "--format", "json")
        month = datetime.now(timezone.utc).strftime("%Y-%m-01")
        assert code == 0 and f"since {month} (the current month, UTC" in err
        assert json.loads(out)["totals"]["tokens"]["output"] == 3

        ahead = (datetime.now(timezone.utc) + timedelta(days=40)).strftime("%Y-%m-01")
        args = ("cost", "reprice", "--policy", str(path), "--model", "sim-spark", "--input", "0.3", "--output", "0.9",
                "--from", ahead)
        code, out, _ = run_cli(capsys, *args, "--apply")
        assert code == 0 and "nothing to re-price yet" in out and "applied" in out
        entries = load_policy(path).prices["sim-spark"]
        assert [e.effective_from.strftime("%Y-%m-%d") for e in entries][-1] == ahead

        inside = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:30Z")
        code, _, err = run_cli(capsys, "cost", "reprice", "--policy", str(path), "--model", "sim-codex",
                               "--input", "1", "--output", "1", "--from", inside)
        assert code == 0 and "the whole hour from" in err
