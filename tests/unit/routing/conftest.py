"""Fixtures of the routing tests that drive real simulated upstreams."""
from __future__ import annotations

import asyncio

import pytest


@pytest.fixture
def loop():
    """A fresh event loop per test: the router's upstream pools belong to the loop they ran on."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
