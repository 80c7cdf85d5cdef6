"""GET /admin/cost and `laneway cost report` read a bounded period, in pipelined batches (issue 12 G).

Before, `since=0001-01-01` asked the Redis ledger for 17.7 million hours, one HGETALL each, and
held the worker for hours; now a period longer than the ledger keeps (`ledger.retention_days`)
is a 400 in OpenAI's error shape that names the limit, and the longest allowed period (400 days,
9 600 hours) is read in pipelines of 256 hours.
"""
from __future__ import annotations

import hashlib
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from proxy.cli import main
from tests.redis_support import redis_server  # noqa: F401  (fixture)
from tests.support import proxy_from_yaml, simulator

ADMIN = "lw-admin-cost-period"
POLICY = """\
version: 1
auth: keys
keys:
  - {{name: ops, sha256: {admin}, admin: true}}
store:
  redis_url: {url}
deployments:
  - {{name: {dep}, provider: openai, model: sim-codex, base_url: {sim}/v1}}
ledger:
  flush_interval_s: 0.05
"""


def hgetall_calls(server) -> int:
    stats = server.cli("INFO", "commandstats")
    line = next((line for line in stats.splitlines() if line.startswith("cmdstat_hgetall:")), "cmdstat_hgetall:calls=0,")
    return int(line.split("calls=")[1].split(",")[0])


@pytest.fixture
def proxy(tmp_path, redis_server):
    dep = f"dep-{uuid.uuid4().hex[:8]}"
    with simulator("instant") as sim:
        text = POLICY.format(admin=hashlib.sha256(ADMIN.encode()).hexdigest(), url=redis_server.url, dep=dep, sim=sim.url)
        with proxy_from_yaml(tmp_path, text) as server:
            server.deployment = dep
            for _ in range(3):
                answer = httpx.post(server.url + "/v1/chat/completions", headers={"authorization": f"Bearer {ADMIN}"},
                                    json={"model": dep, "messages": [{"role": "user", "content": "hi"}]})
                assert answer.status_code == 200
            yield server


def cost(proxy, **params: str) -> httpx.Response:
    return httpx.get(f"{proxy.url}/admin/cost", params=params, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)


@pytest.mark.parametrize("period", [{"since": "0001-01-01"}, {"since": "2020-01-01", "until": "2026-01-01"},
                                    {"since": "2026-01-01", "until": "9999-12-31"}])
def test_a_period_longer_than_the_ledger_keeps_is_a_400_naming_the_limit(proxy, period):
    started = time.monotonic()
    answer = cost(proxy, **period)
    assert time.monotonic() - started < 1
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "since", "invalid_time")
    assert "at most 400 days" in error["message"] and "ledger.retention_days" in error["message"]


def test_the_longest_period_is_read_in_pipelined_batches(proxy, redis_server):
    until = datetime.now(timezone.utc)
    since = until - timedelta(days=400)
    before = hgetall_calls(redis_server)
    started = time.monotonic()
    answer = cost(proxy, since=since.isoformat(), until=until.isoformat(), by="deployment")
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    line = next(line for line in answer.json()["lines"] if line["group"] == proxy.deployment)
    assert line["tokens"]["requests"] == 3
    assert 400 * 24 <= hgetall_calls(redis_server) - before <= 400 * 24 + 2  # one per hour, no more
    assert took < 5


def test_the_cli_refuses_an_unbounded_period(proxy, tmp_path, capsys):
    started = time.monotonic()
    code = main(["cost", "report", "--policy", str(tmp_path / "policy.yaml"), "--since", "0001-01-01"])
    _, err = capsys.readouterr()
    assert code == 2 and "at most 400 days" in err and time.monotonic() - started < 5
