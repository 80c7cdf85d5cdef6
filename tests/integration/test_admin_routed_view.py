"""/admin/policy shows the latency figures a replica routes on, not only its own: its own
measurements, the other replicas' pooled ones (shared through a real Redis) and the blend, with
how old the peers' figures are. A replica that measured a fast wafer lane itself can route on a
fleet figure of seconds; its answer must say so."""
from __future__ import annotations

import time

import httpx
import orjson
import redis

from proxy.routing.share import KEY
from tests.redis_support import RedisServer
from tests.support import proxy_from_yaml, simulator

POLICY = """\
version: 1
auth: open
store: {{redis_url: "{redis}"}}
deployments:
  - name: wafer
    provider: openai
    model: sim-wafer
    base_url: {wafer}/v1
    hardware: wafer
routes:
  - name: fast
    candidates: [wafer]
"""
PEER_TTFT_MS = 2230.0  # what another replica measured of the same deployment


def test_admin_policy_shows_own_peer_and_routed_figures_and_the_peers_age(tmp_path):
    with RedisServer() as server, simulator("wafer", ttft_ms=5, tokens_per_s=3000) as wafer:
        peer = {"at": time.time() - 3, "deployments": {"wafer": {
            "t": [[PEER_TTFT_MS, 64.0], None, None, None], "d": [[1500.0, 64.0], None, None, None], "e": [0.0, 64.0]}}}
        redis.Redis.from_url(server.url).hset(KEY, "another-replica", orjson.dumps(peer))
        with proxy_from_yaml(tmp_path, POLICY.format(redis=server.url, wafer=wafer.url)) as proxy:
            for _ in range(4):
                body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
                assert "[DONE]" in httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=10).text
            deadline = time.monotonic() + 8
            while (routing := httpx.get(proxy.url + "/admin/policy").json()["routing"])["peers"]["replicas"] < 1:
                assert time.monotonic() < deadline, routing["peers"]
                time.sleep(0.2)
    view, peers = routing["routed"]["wafer"], routing["peers"]
    assert view["own_ttft_ms"] < 500 and view["peers_ttft_ms"] == PEER_TTFT_MS
    assert view["own_ttft_ms"] < view["routed_ttft_ms"] < PEER_TTFT_MS, view  # the blend, weighted by samples
    assert view["measured"] is True and routing["deployments"]["wafer"]["ttft_ms_ewma"] == view["own_ttft_ms"]
    assert peers["shared"] is True and peers["oldest_figures_age_s"] >= 3 and peers["synced_age_s"] < 5, peers
