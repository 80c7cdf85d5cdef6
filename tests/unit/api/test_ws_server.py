"""The client-facing WebSocket protocol: writes of one loop iteration leave as one, and a batch of
texts arrives as one message each."""
from __future__ import annotations

import asyncio
import json

import pytest
from websockets.sync import client as ws_client

from proxy.api.ws_server import SEND_TEXTS, CoalescedWrites
from tests.support import ServerThread


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


async def _batch_app(scope, receive, send) -> None:
    """Accepts, reports whether the batch extension is offered, then sends a batch if it is."""
    await receive()
    await send({"type": "websocket.accept"})
    offered = SEND_TEXTS in scope.get("extensions", {})
    await send({"type": "websocket.send", "text": json.dumps({"offered": offered})})
    if offered:
        await send({"type": SEND_TEXTS, "texts": PAYLOADS})
    await send({"type": "websocket.close", "code": 1000})


# header lengths: 7-bit, 16-bit and 64-bit; and non-ASCII text
PAYLOADS = [b'{"n":1}', json.dumps({"pad": "x" * 300}).encode(), json.dumps({"pad": "y" * 70_000}).encode(),
            json.dumps({"t": "caf\u00e9 \u2713"}, ensure_ascii=False).encode()]


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_a_batch_of_texts_arrives_as_one_message_each(compression):
    with ServerThread(_batch_app, lifespan="off") as server:
        with ws_client.connect(f"ws://127.0.0.1:{server.port}/", compression=compression, max_size=None) as ws:
            assert json.loads(ws.recv(timeout=5)) == {"offered": True}
            received = [ws.recv(timeout=5) for _ in PAYLOADS]
    assert received == [p.decode() for p in PAYLOADS]  # text frames, byte for byte


def test_plain_uvicorn_offers_no_batch_extension():
    with ServerThread(_batch_app, lifespan="off", ws="websockets-sansio") as server:
        with ws_client.connect(f"ws://127.0.0.1:{server.port}/") as ws:
            assert json.loads(ws.recv(timeout=5)) == {"offered": False}
