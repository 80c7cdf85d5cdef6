"""The sampler at policy load: every route's series exist at zero (so rate() sees a route's
first request), declared limits export their size, and every quota series names its unit."""
from __future__ import annotations

import asyncio

from proxy.api.state import ProxyState
from proxy.config import load_policy
from proxy.metrics import families
from proxy.metrics.observer import RequestMetrics
from proxy.metrics.sampler import Sampler
from tests.redis_support import redis_server  # noqa: F401  (fixture)

POLICY = """\
version: 1
auth: open
deployments:
  - name: smp-wafer
    provider: cerebras
    model: m
    base_url: http://127.0.0.1:9/v1
    hardware: wafer
    limits: {rpm: 30, tpm: 60000, concurrency: 4}
  - name: smp-gpu
    provider: openai
    model: g
    base_url: http://127.0.0.1:9/v1
    hardware: gpu
routes:
  - name: smp-route
    candidates: [smp-wafer, smp-gpu]
"""


def sample(name: str, **labels: str) -> float | None:
    return families.REGISTRY.get_sample_value(name, labels)


def sampled(tmp_path) -> ProxyState:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    state = ProxyState(load_policy(path))
    state.reloader = None
    Sampler(state, RequestMetrics(lambda: state.policy.deployments)).sample()
    return state


def test_route_series_exist_at_zero_from_policy_load(tmp_path):
    sampled(tmp_path)
    for route, dep, lane in (("smp-route", "smp-wafer", "wafer"), ("smp-route", "smp-gpu", "gpu"),
                             ("smp-gpu", "smp-gpu", "gpu")):  # a deployment a client names directly
        assert sample("laneway_time_to_first_token_seconds_count", route=route, deployment=dep, lane=lane,
                      transport="websocket") == 0
        assert sample("laneway_request_duration_seconds_count", route=route, deployment=dep, lane=lane,
                      transport="http") == 0
        assert sample("laneway_requests_total", route=route, deployment=dep, lane=lane, status="200",
                      transport="websocket", endpoint="responses") == 0
    assert sample("laneway_upstream_rate_limited_total", deployment="smp-wafer") == 0


def test_declared_limits_export_their_size_one_unit_per_series(tmp_path):
    sampled(tmp_path)
    assert sample("laneway_ratelimit_limit", deployment="smp-wafer", window="rpm", unit="requests", source="laneway") == 30
    assert sample("laneway_ratelimit_limit", deployment="smp-wafer", window="tpm", unit="tokens", source="laneway") == 60000
    assert sample("laneway_ratelimit_limit", deployment="smp-wafer", window="concurrency", unit="requests",
                  source="laneway") == 4


def test_quota_leases_count_leases_borrowed_and_requests_admitted_from_them(tmp_path, redis_server):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.replace("auth: open\n", f"auth: open\nstore: {{redis_url: '{redis_server.url}', leases: {{share: 1}}}}\n")
                    .replace("smp-wafer", "lease-wafer").replace("smp-gpu", "lease-gpu").replace("smp-route", "lease-route"))
    state = ProxyState(load_policy(path))
    state.reloader = None
    leases_before = sample("laneway_ratelimit_leases_total") or 0
    admitted_before = sample("laneway_ratelimit_leased_admissions_total") or 0

    async def admit(n: int) -> None:
        for _ in range(n):
            ticket = state.limiter.borrow("", 10, 5)
            await ticket.admit("lease-wafer")
            state.limiter.give_back(ticket, 12)
        await state.limiter.aclose()

    asyncio.run(admit(7))
    Sampler(state, RequestMetrics(lambda: state.policy.deployments)).sample()
    borrowed = sample("laneway_ratelimit_leases_total") - leases_before
    assert sample("laneway_ratelimit_leased_admissions_total") - admitted_before == 7
    assert 1 <= borrowed < 7  # sizes 1, 2, 4: three leases for seven requests
