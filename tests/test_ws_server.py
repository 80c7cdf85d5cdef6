"""Client WebSocket writes made in one event-loop iteration leave as one socket write."""
from __future__ import annotations

import asyncio

from proxy.api.ws_server import CoalescedWrites


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def _frames_then_yield(writes: CoalescedWrites, raw: _Transport) -> list[list[bytes]]:
    seen = []
    for frame in (b"a", b"bb", b"ccc"):
        writes.write(frame)
    seen.append(list(raw.writes))  # nothing has left while the callback runs
    await asyncio.sleep(0)
    seen.append(list(raw.writes))
    writes.write(b"d")
    await asyncio.sleep(0)
    seen.append(list(raw.writes))
    return seen


def test_writes_of_one_iteration_are_joined_in_order():
    raw = _Transport()
    loop = asyncio.new_event_loop()
    try:
        seen = loop.run_until_complete(_frames_then_yield(CoalescedWrites(raw, loop), raw))
    finally:
        loop.close()
    assert seen == [[], [b"abbccc"], [b"abbccc", b"d"]]


def test_close_sends_what_is_pending_first_and_abort_drops_it():
    loop = asyncio.new_event_loop()
    try:
        raw = _Transport()
        writes = CoalescedWrites(raw, loop)
        writes.write(b"frame")
        writes.write(b"close-frame")
        writes.close()
        assert raw.writes == [b"frameclose-frame"] and raw.closed
        loop.run_until_complete(asyncio.sleep(0))  # the scheduled flush finds nothing left
        assert raw.writes == [b"frameclose-frame"]

        raw = _Transport()
        writes = CoalescedWrites(raw, loop)
        writes.write(b"frame")
        writes.abort()
        loop.run_until_complete(asyncio.sleep(0))
        assert raw.writes == [] and raw.aborted
        assert writes.get_extra_info("peername") == "info:peername"  # everything else is the transport's
    finally:
        loop.close()
