"""GET /readyz says whether requests can be admitted: under fail_closed that needs the configured Redis."""
from __future__ import annotations

import httpx
import pytest

from tests.redis_support import RedisServer
from tests.support import proxy_from_yaml

POLICY = """\
version: 1
auth: open
store:
  redis_url: {url}
  on_store_error: {mode}
deployments:
  - name: sim
    provider: openai
    model: sim-instant
    base_url: {upstream}/v1
    limits: {{rpm: 1000}}
"""


@pytest.mark.parametrize("mode, down_status", [("fail_closed", 503), ("fail_open", 200)])
def test_readyz_follows_the_store_under_the_policy(tmp_path, wafer_sim, mode, down_status):
    with RedisServer() as redis:
        with proxy_from_yaml(tmp_path, POLICY.format(url=redis.url, mode=mode, upstream=wafer_sim.url)) as proxy:
            ready = httpx.get(proxy.url + "/readyz", timeout=5)
            assert ready.status_code == 200 and ready.json()["store"] == "reachable"
            redis.stop()
            down = httpx.get(proxy.url + "/readyz", timeout=5)
            assert down.status_code == down_status and down.json()["store"] == "unreachable"
            if mode == "fail_closed":
                assert down.json()["status"] == "unavailable" and "fail_closed" in down.json()["reason"]
                call = httpx.post(proxy.url + "/v1/chat/completions", timeout=5,
                                  json={"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
                assert call.status_code == 503, "readiness agrees with admission"
            redis.start()
            again = httpx.get(proxy.url + "/readyz", timeout=5)
            assert again.status_code == 200 and again.json()["store"] == "reachable"


def test_readyz_without_a_store_is_ready(tmp_path, wafer_sim):
    text = POLICY.format(url="x", mode="fail_closed", upstream=wafer_sim.url).replace("store:\n  redis_url: x\n  on_store_error: fail_closed\n", "")
    with proxy_from_yaml(tmp_path, text) as proxy:
        ready = httpx.get(proxy.url + "/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["store"] == "embedded"
