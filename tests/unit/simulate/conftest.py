"""One instant simulator per module, reset before each test that asks for ``fresh``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from proxy.simulate import get_profile, serve_in_thread
from proxy.simulate.server import RunningSimulator


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    with serve_in_thread(get_profile("instant")) as running:
        yield running


@pytest.fixture()
def fresh(sim: RunningSimulator) -> RunningSimulator:
    httpx.post(sim.root_url + "/sim/reset").raise_for_status()
    return sim
