"""Without Redis the ledger lives in a local SQLite file: a restart loses no usage and no budget spend.

Before, the embedded default kept both in memory: a restarted single-replica proxy forgot the
day's usage (`/admin/cost` empty), `laneway cost report` could not read it, and a team whose hard
budget was used up could spend it again.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx

from proxy.cli import main
from tests.support import proxy_from_yaml, simulator

ALICE, ADMIN = "lw-alice-sqlite", "lw-admin-sqlite"
POLICY = """\
version: 1
auth: keys
keys:
  - {{name: alice, sha256: {alice}, team: research}}
  - {{name: ops, sha256: {admin}, admin: true}}
team_budgets:
  research: {{daily_hard_usd: 0.004}}
store:
  sqlite_path: {path}
deployments:
  - {{name: gpu, provider: openai, model: sim-codex, base_url: {sim}/v1}}
routes:
  - {{name: codex, candidates: [gpu]}}
ledger:
  flush_interval_s: 0.05
prices:
  sim-codex:
    - {{effective_from: 2020-01-01, input_per_mtok: 10, output_per_mtok: 30, status: announced}}
"""
BODY = {"model": "codex", "messages": [{"role": "user", "content": "a short question"}], "max_tokens": 20}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ask(proxy) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {ALICE}"}, timeout=10)


def report(proxy) -> dict:
    answer = httpx.get(proxy.url + "/admin/cost?by=team", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["totals"]["tokens"]


def test_usage_and_budget_spend_survive_a_restart(tmp_path, capsys):
    ledger = tmp_path / "state" / "usage.sqlite3"
    with simulator("instant") as sim:
        text = POLICY.format(alice=sha(ALICE), admin=sha(ADMIN), path=ledger, sim=sim.url)
        with proxy_from_yaml(tmp_path, text) as first:
            served = 0
            while (answer := ask(first)).status_code == 200:
                served += 1
                assert served < 20, "the budget never ran out"
            refused_before = answer.json()["error"]
            assert refused_before["code"] == "insufficient_quota"
            assert report(first)["requests"] == served
        stats = httpx.get(sim.url + "/sim/stats").json()
        assert stats["requests"] == served >= 2

        with proxy_from_yaml(tmp_path, text) as second:  # a new process on the same file
            tokens = report(second)
            assert (tokens["requests"], tokens["input"], tokens["output"]) == (
                served, stats["input_tokens"], stats["output_tokens"])
            answer = ask(second)
            assert answer.status_code == 429, "the day's spend was restored: the budget is still used up"
            assert answer.json()["error"]["message"] == refused_before["message"]  # same $ spent
        assert httpx.get(sim.url + "/sim/stats").json()["requests"] == served

    since = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:00Z")
    code = main(["cost", "report", "--policy", str(tmp_path / "policy.yaml"), "--since", since, "--by", "key",
                 "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    totals = json.loads(out)["totals"]
    assert (totals["tokens"]["requests"], totals["tokens"]["output"]) == (served, stats["output_tokens"])
    assert Decimal("0.002") < Decimal(totals["usd"]["exact_total"]) <= Decimal("0.004")  # up to the hard limit
