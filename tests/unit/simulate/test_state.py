"""proxy/simulate/state.py: fault specs, the provider's counters and what a reset clears."""
from __future__ import annotations

import pytest

from proxy.simulate.profiles import PROFILES
from proxy.simulate.state import ProviderState, Stats, parse_fault


@pytest.mark.parametrize("spec, fault", [
    ("429", ("error", 429.0)), (" 503 ", ("error", 503.0)), ("hang", ("hang", 0.0)),
    ("drop_mid_stream", ("drop_mid_stream", 0.0)), ("slow_first_byte:250", ("slow_first_byte", 250.0)),
    ("slow_first_byte:0", ("slow_first_byte", 0.0)),
])
def test_every_documented_fault_parses(spec, fault) -> None:
    assert parse_fault(spec) == fault


@pytest.mark.parametrize("spec", ["404", "200", "-429", "slow_first_byte", "slow_first_byte:-5", "slow_first_byte:abc",
                                  "slow_first_byte:nan", "hang:3", "", "drop"])
def test_an_unknown_fault_is_refused_with_the_valid_list(spec) -> None:
    with pytest.raises(ValueError, match="valid: 400, 429"):
        parse_fault(spec)


def test_snapshot_is_a_copy_per_model_and_reset_zeroes_everything() -> None:
    stats = Stats()
    stats.requests, stats.output_tokens, stats.faults = 3, 40, 1
    stats.model("m")[0] += 2
    snap = stats.snapshot()
    assert snap["requests"] == 3 and snap["by_model"] == {"m": {"requests": 2, "input_tokens": 0, "output_tokens": 0}}
    stats.model("m")[0] += 1
    assert snap["by_model"]["m"]["requests"] == 2  # a snapshot does not move with the counters
    stats.reset()
    assert stats.snapshot() == {"requests": 0, "input_tokens": 0, "output_tokens": 0, "disconnects": 0,
                                "rate_limited": 0, "faults": 0, "by_model": {}}


def test_a_provider_reset_clears_counters_faults_quotas_and_stored_responses_but_not_the_id_sequence() -> None:
    profile = next(iter(PROFILES.values()))
    state = ProviderState(profile, None)
    state.stats.requests = 5
    state.faults.append(parse_fault("429"))
    first = state.next_id()
    state.reset()
    assert state.stats.requests == 0 and not state.faults
    assert state.next_id() == first + 1  # ids never repeat within a process, reset or not
