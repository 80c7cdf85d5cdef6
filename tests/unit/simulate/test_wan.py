"""The emulated WAN link: bytes arrive intact and in order, no sooner than the RTT, the handshake
and the bandwidth allow, connections share the link without waiting for each other, closes and
a dead target propagate instead of hanging, and the counters count every byte each way."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from proxy.simulate.wan import CONNECTIONS, DOWN, SEGMENT, UP, WanLink

pytestmark = pytest.mark.timeout(30)

Body = Callable[[WanLink, int], Awaitable[None]]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def _through_link(body: Body, rtt_ms: float = 40, mbit: float = 0) -> None:
    """Run ``body(link, port)`` against an echo server behind a link of ``rtt_ms`` / ``mbit``."""
    async def main() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        link = WanLink(("127.0.0.1", server.sockets[0].getsockname()[1]), rtt_ms, mbit)
        port = await link.start()
        try:
            await body(link, port)
        finally:
            link.close()
            server.close()

    asyncio.run(main())


async def _ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int = 1) -> float:
    started = time.perf_counter()
    writer.write(b"p" * size)
    await reader.readexactly(size)
    return time.perf_counter() - started


def test_many_chunks_arrive_intact_and_in_order_and_are_counted() -> None:
    rng = random.Random(5)
    chunks = [rng.randbytes(rng.choice((1, 7, 300, 1500, SEGMENT + 3, 200_000))) for _ in range(120)]
    sent = b"".join(chunks)

    async def body(link: WanLink, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for chunk in chunks:  # no awaits between writes: chunks pile up in the delay line together
            writer.write(chunk)
        assert await reader.readexactly(len(sent)) == sent
        writer.close()
        assert (link.counters[UP], link.counters[DOWN], link.counters[CONNECTIONS]) == (len(sent), len(sent), 1)

    _through_link(body, rtt_ms=10, mbit=400)


def test_a_round_trip_takes_the_rtt_and_a_new_connection_one_more() -> None:
    async def body(link: WanLink, port: int) -> None:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _ping(reader, writer)
        first = time.perf_counter() - started
        again = [await _ping(reader, writer) for _ in range(3)]
        writer.close()
        assert first >= 0.2 - 0.002  # handshake RTT + the ping's RTT
        assert all(0.1 - 0.002 <= t < 0.19 for t in again), again  # not a second handshake

    _through_link(body, rtt_ms=100)


def test_bandwidth_caps_each_direction() -> None:
    size = 250_000  # 2 Mbit: 0.2 s at 10 Mbit/s on the way up, then streamed back as it arrives

    async def body(link: WanLink, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _ping(reader, writer)  # past the handshake
        took = await _ping(reader, writer, size)
        writer.close()
        # up: 0.2 s of serialisation + 5 ms; down overlaps it, so at least 0.2 s + one segment + the RTT
        assert took >= 0.2 + SEGMENT * 8 / 10e6 + 0.01 - 0.002, took

    _through_link(body, rtt_ms=10, mbit=10)


def test_connections_do_not_wait_for_each_other() -> None:
    async def body(link: WanLink, port: int) -> None:
        pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        await asyncio.gather(*(_ping(r, w) for r, w in pairs))  # past every handshake
        started = time.perf_counter()
        await asyncio.gather(*(_ping(r, w) for r, w in pairs))
        took = time.perf_counter() - started
        for _, w in pairs:
            w.close()
        assert 0.15 - 0.002 <= took < 0.15 * 1.8, took  # one RTT for all five, not five

    _through_link(body, rtt_ms=150)


def test_a_close_reaches_the_far_end_after_the_data_before_it() -> None:
    async def body(link: WanLink, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"last words")
        writer.write_eof()  # the echo server answers, then closes; the close travels back too
        started = time.perf_counter()
        assert await reader.read() == b"last words"  # everything, then EOF: no hang, nothing lost
        assert time.perf_counter() - started >= 0.03 - 0.002

    _through_link(body, rtt_ms=30)


def test_a_dead_target_closes_the_client_instead_of_hanging() -> None:
    async def main() -> None:
        probe = await asyncio.start_server(_echo, "127.0.0.1", 0)
        dead = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        link = WanLink(("127.0.0.1", dead), 20, 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", await link.start())
        writer.write(b"hello")
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass  # aborted: as good as a close
        link.close()

    asyncio.run(main())


@pytest.mark.parametrize("rtt_ms, mbit", [(-1, 0), (0, -5), (float("nan"), 0), (0, float("inf"))])
def test_hostile_settings_are_refused(rtt_ms: float, mbit: float) -> None:
    with pytest.raises(ValueError):
        WanLink(("127.0.0.1", 1), rtt_ms, mbit)
