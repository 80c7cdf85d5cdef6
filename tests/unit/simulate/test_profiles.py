"""Simulator profiles: the per-request overhead model (a continued socket turn is spared the
configured shares of the overhead and the TTFT, nothing else is), off in the classic profiles,
and hostile settings refused with the field's name."""

from __future__ import annotations

import math

import pytest

from proxy.simulate import PROFILES, get_profile
from proxy.simulate.profiles import (
    PUBLISHED_CONTINUED_OVERHEAD_SHARE,
    PUBLISHED_CONTINUED_TTFT_SHARE,
)


def test_a_continued_turn_pays_the_configured_shares_and_a_fresh_one_everything() -> None:
    p = get_profile("wafer", request_overhead_ms=100, continued_overhead_share=0.2, continued_ttft_share=0.5)
    assert p.first_token_s() == pytest.approx(0.160)  # 100 ms overhead + 60 ms TTFT
    assert p.first_token_s(continued=True) == pytest.approx(0.020 + 0.030)
    assert not get_profile("instant", request_overhead_ms=5).instant  # an overhead is a sleep


def test_the_agent_profile_carries_the_published_claims() -> None:
    agent = PROFILES["agent"]
    assert (agent.continued_overhead_share, agent.continued_ttft_share) == (0.2, 0.5)
    assert (PUBLISHED_CONTINUED_OVERHEAD_SHARE, PUBLISHED_CONTINUED_TTFT_SHARE) == (0.2, 0.5)
    overhead, ttft = agent.request_overhead_ms / 1000, agent.ttft_ms / 1000
    assert agent.first_token_s(True) == pytest.approx(overhead * 0.2 + ttft * 0.5)


@pytest.mark.parametrize("name", ["wafer", "gpu", "instant"])
def test_classic_profiles_keep_their_timing(name: str) -> None:
    p = PROFILES[name]
    assert p.first_token_s() == p.first_token_s(continued=True) == p.ttft_ms / 1000


@pytest.mark.parametrize("field, value", [
    ("request_overhead_ms", -1.0), ("request_overhead_ms", math.nan), ("request_overhead_ms", math.inf),
    ("continued_overhead_share", 1.5), ("continued_overhead_share", -0.1), ("continued_ttft_share", math.nan),
])
def test_hostile_overhead_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        get_profile("wafer", **{field: value})
