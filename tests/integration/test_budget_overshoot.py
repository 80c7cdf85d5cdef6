"""A hard budget under concurrent requests that set no max_tokens and write long answers.

The reservation is the route's learnt high quantile of output tokens (issue 12: a constant 1024
let 20 concurrent 3,000-token answers spend far past a hard limit)."""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx

from tests.support import proxy_from_yaml, simulator

LIMIT = Decimal("0.02")
IN_PRICE, OUT_PRICE = Decimal(1), Decimal(1)  # USD per million tokens
POLICY = """\
version: 1
auth: keys
keys:
  - {{name: warm, sha256: {warm}}}
  - {{name: capped, sha256: {capped}, team: research}}
team_budgets:
  research: {{daily_hard_usd: {limit}}}
deployments:
  - {{name: long, provider: openai, model: sim-gpu, base_url: {sim}/v1}}
routes:
  - {{name: codex, candidates: [long]}}
prices:
  sim-gpu:
    - {{effective_from: 2020-01-01, input_per_mtok: {inp}, output_per_mtok: {out}, status: announced}}
"""


def post(server, key: str) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": "codex", "messages": [{"role": "user", "content": "write at length"}]})


def test_concurrent_long_answers_stay_within_5_percent_of_a_hard_budget(tmp_path):
    sha = lambda key: hashlib.sha256(key.encode()).hexdigest()  # noqa: E731
    with simulator("gpu", ttft_ms=400, tokens_per_s=0, default_output_tokens=3000) as sim:
        text = POLICY.format(warm=sha("lw-warm"), capped=sha("lw-capped"), limit=LIMIT, sim=sim.url, inp=IN_PRICE, out=OUT_PRICE)
        with proxy_from_yaml(tmp_path, text) as server:
            for _ in range(10):  # other traffic on the route teaches it how long its answers are
                assert post(server, "lw-warm").status_code == 200
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda _: post(server, "lw-capped"), range(20)))
    served = [a.json()["usage"] for a in answers if a.status_code == 200]
    spent = sum(Decimal(u["prompt_tokens"]) * IN_PRICE + Decimal(u["completion_tokens"]) * OUT_PRICE for u in served) / 1_000_000
    refused = [a for a in answers if a.status_code != 200]
    assert served and all(a.status_code == 429 and a.json()["error"]["code"] == "insufficient_quota" for a in refused)
    assert spent <= LIMIT * Decimal("1.05"), f"{len(served)} served, ${spent} spent on a ${LIMIT} hard limit"
