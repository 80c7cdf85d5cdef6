"""proxy/store/failover.py: which store answers an admission while the shared one is down."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from proxy.errors import StoreUnavailable
from proxy.store import failover
from proxy.store.base import StoreError
from proxy.store.failover import RETRY_STORE_S, Failover

SHARED, LOCAL = object(), object()


@dataclass
class Counts:
    store_errors: int = 0
    local_admissions: int = 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(failover.time, "monotonic", clock)
    return clock


def test_fail_closed_refuses_every_call_the_store_cannot_answer_and_keeps_asking_it(clock: Clock) -> None:
    counts = Counts()
    f = Failover("fail_closed", SHARED, LOCAL, counts)
    for _ in range(3):
        assert f.choose() is SHARED
        with pytest.raises(StoreUnavailable) as info:
            f.failed(StoreError("connection refused"))
        assert info.value.code == "rate_limit_store_unavailable"
    # Never the local twin, not even after the retry interval: nothing is admitted without the store.
    clock.now += 10 * RETRY_STORE_S
    assert f.choose() is SHARED
    assert counts.store_errors == 3 and counts.local_admissions == 0


def test_fail_open_serves_locally_then_hands_one_caller_the_shared_store_per_interval(clock: Clock) -> None:
    f = Failover("fail_open", SHARED, LOCAL, Counts())
    assert f.choose() is SHARED
    f.failed(StoreError("timeout"))
    assert [f.choose() for _ in range(5)] == [LOCAL] * 5
    clock.now += RETRY_STORE_S
    # Exactly one caller tries the shared store; those arriving meanwhile stay local.
    assert [f.choose() for _ in range(4)] == [SHARED, LOCAL, LOCAL, LOCAL]
    f.failed(StoreError("timeout"))
    assert f.choose() is LOCAL
    clock.now += RETRY_STORE_S
    assert f.choose() is SHARED
    f.answered()
    assert [f.choose() for _ in range(3)] == [SHARED] * 3


def test_an_incident_is_logged_once_at_start_and_once_at_end_with_its_local_total(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    counts = Counts()
    f = Failover("fail_open", SHARED, LOCAL, counts)
    caplog.set_level(logging.WARNING, "laneway.limits")
    f.failed(StoreError("refused"))
    for _ in range(7):
        f.admitted_locally()
    clock.now += 2.5
    f.answered()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "unreachable" in lines[0] and "per-replica" in lines[0]
    assert "reachable again after 2.5s" in lines[1] and "7 requests" in lines[1]
    assert counts.local_admissions == 7
    # A second answer with no incident in between logs nothing.
    f.answered()
    assert len(caplog.records) == 2


def test_a_long_incident_reports_its_local_admissions_at_most_once_per_interval(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    f = Failover("fail_open", SHARED, LOCAL, Counts())
    caplog.set_level(logging.WARNING, "laneway.limits")
    f.failed(StoreError("refused"))
    for _ in range(20):                       # many failures inside one interval: no extra line
        f.admitted_locally()
        clock.now += RETRY_STORE_S / 10
        f.failed(StoreError("refused"))
    still = [r.getMessage() for r in caplog.records if "still no answer" in r.getMessage()]
    assert 1 <= len(still) <= 3
    assert sum(int(line.split("; ")[1].split()[0]) for line in still) <= 20


def test_background_failures_count_and_open_the_incident_without_changing_admission(clock: Clock) -> None:
    counts = Counts()
    f = Failover("fail_closed", SHARED, LOCAL, counts)
    f.background_failed(StoreError("settle lost"))   # must not raise: no request is waiting on it
    assert counts.store_errors == 1
    assert f.choose() is SHARED
    open_ = Failover("fail_open", SHARED, LOCAL, Counts())
    open_.background_failed(StoreError("settle lost"))
    assert open_.choose() is SHARED and not open_.serving_locally


def test_the_budgets_failover_names_itself_in_its_refusal_and_its_lines(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "laneway.limits")
    closed = Failover("fail_closed", SHARED, LOCAL, Counts(), name="budget", subject="Budgets",
                      code="budget_store_unavailable")
    with pytest.raises(StoreUnavailable) as info:
        closed.failed(StoreError("refused"))
    assert info.value.code == "budget_store_unavailable" and info.value.message.startswith("Budgets cannot be checked")
    assert caplog.records[-1].getMessage().startswith("budget store unreachable")
