"""proxy.upstream.http_pool against real loopback upstreams that misbehave on purpose.

Each upstream is a small asyncio server on a free port; the pool is driven on uvloop (what
the proxy runs) and, where event-loop details matter, on the stdlib loop too.
"""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from proxy.call import UpstreamClosed, UpstreamConnectError, UpstreamError, UpstreamTimeout
from proxy.upstream.http_pool import Origin, OriginPool, UpstreamPools

GET = b"GET /v1/x HTTP/1.1\r\nHost: t\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


class Upstream(asyncio.Protocol):
    """One accepted connection; ``answer(upstream)`` is called once per complete request head."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.accepted += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(rest) < length:
                return  # the body is still arriving
            body, self.buffer = rest[:length], rest[length:]
            self.server.requests.append(head + b"\r\n\r\n" + body)
            self.server.answer(self)


class Server:
    def __init__(self, answer: Callable[[Upstream], None]) -> None:
        self.answer = answer
        self.accepted = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> "Server":
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Upstream(self), "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.pool = OriginPool(Origin.parse(f"http://127.0.0.1:{port}/v1"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.pool.close()
        self._server.close()

    async def get(self, body: bytes = b"", first_byte_s: float = 2, idle_s: float = 2) -> bytes:
        head = GET if not body else b"POST /v1/x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
        response = await self.pool.request(head, body, connect_s=2, first_byte_s=first_byte_s, idle_s=idle_s)
        return await response.read()


def run(main: Callable[[], Awaitable[object]], loop: str = "uvloop") -> object:
    event_loop = LOOPS[loop]()
    try:
        return event_loop.run_until_complete(main())
    finally:
        event_loop.close()


def answer_then_close(upstream: Upstream) -> None:
    """Keep-alive by the headers, closed by the upstream right after the response (K)."""
    upstream.transport.write(OK)
    upstream.transport.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_upstream_closing_every_connection_after_each_response_never_fails_a_request(loop):
    async def main() -> None:
        async with Server(answer_then_close) as upstream:
            for pause in range(60):
                assert await upstream.get() == b"{}"
                for _ in range(pause % 3):  # hand the connection back while its FIN is being handled
                    await asyncio.sleep(0)
            results = await asyncio.gather(*(upstream.get() for _ in range(40)), return_exceptions=True)
            assert results == [b"{}"] * 40
            assert len(upstream.requests) == 100  # each request reached the upstream once
            assert upstream.pool._idle == [] or all(not c.transport.is_closing() for c in upstream.pool._idle)

    run(main, loop)


def test_a_closing_pooled_connection_is_not_written_to():
    async def main() -> None:
        async with Server(answer_then_close) as upstream:
            assert await upstream.get() == b"{}"
            await asyncio.sleep(0)  # the FIN is seen: the pooled connection is closing, not yet lost
            pooled = list(upstream.pool._idle)
            assert pooled and pooled[0].transport.is_closing()
            assert await upstream.get() == b"{}"
            assert upstream.accepted == 2 and len(upstream.requests) == 2

    run(main)


def test_keep_alive_connection_is_reused_and_large_bodies_arrive_whole():
    body = b"x" * 200_000  # above the size written in a separate call

    def echo_size(upstream: Upstream) -> None:
        size = b"%d" % (len(upstream.server.requests[-1]) - upstream.server.requests[-1].index(b"\r\n\r\n") - 4)
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(size), size))

    async def main() -> None:
        async with Server(echo_size) as upstream:
            assert [await upstream.get(body) for _ in range(3)] == [b"200000"] * 3
            assert upstream.accepted == 1

    run(main)


def test_connection_refused_is_a_connect_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening

    async def main() -> None:
        pool = OriginPool(Origin.parse(f"http://127.0.0.1:{port}"))
        with pytest.raises(UpstreamConnectError):
            await pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1)

    run(main)


def test_no_response_within_first_byte_timeout_is_a_timeout_and_the_connection_is_dropped():
    async def main() -> None:
        async with Server(lambda upstream: None) as upstream:
            with pytest.raises(UpstreamTimeout):
                await upstream.get(first_byte_s=0.05)
            assert upstream.pool._idle == []

    run(main)


def test_a_stalled_body_is_a_timeout():
    def stall(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")

    async def main() -> None:
        async with Server(stall) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=0.05)
            chunks = []
            with pytest.raises(UpstreamTimeout):
                async for chunk in response.iter_body():
                    chunks.append(chunk)
            assert chunks == [b"hello"]
            assert upstream.pool._idle == []

    run(main)


def test_a_drop_mid_body_is_not_retried():
    def drop(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        upstream.transport.close()

    async def main() -> None:
        async with Server(drop) as upstream:
            with pytest.raises(UpstreamClosed):
                await upstream.get()
            assert len(upstream.requests) == 1  # bytes had arrived: it reached the upstream

    run(main)


def test_a_pooled_connection_dropped_without_a_byte_is_retried_once_on_a_fresh_one():
    def first_ok_then_silent_close(upstream: Upstream) -> None:
        if len(upstream.server.requests) == 2:  # the pooled connection dies on the second request
            upstream.transport.abort()
        else:
            upstream.transport.write(OK)

    async def main() -> None:
        async with Server(first_ok_then_silent_close) as upstream:
            assert await upstream.get() == b"{}"
            assert await upstream.get() == b"{}"
            assert upstream.accepted == 2 and len(upstream.requests) == 3

    run(main)


def test_malformed_response_is_a_protocol_error():
    async def main() -> None:
        async with Server(lambda upstream: upstream.transport.write(b"NOT HTTP\r\n\r\n")) as upstream:
            with pytest.raises(UpstreamError) as caught:
                await upstream.get()
            assert caught.value.kind == "protocol"

    run(main)


def test_back_pressure_pauses_reading_and_loses_nothing():
    chunks = b"".join(b"4\r\n%04d\r\n" % i for i in range(500)) + b"0\r\n\r\n"

    def stream(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)

    async def main() -> None:
        async with Server(stream) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1)
            await asyncio.sleep(0.05)  # everything arrives while nobody reads
            assert response._conn._paused
            body = await response.read()
            assert body == b"".join(b"%04d" % i for i in range(500))
            assert len(upstream.pool._idle) == 1  # read to the end: back in the pool

    run(main)


def test_abandon_returns_unrelayed_bytes_and_drops_the_connection():
    def partial(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n")

    async def main() -> None:
        async with Server(partial) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1)
            await asyncio.sleep(0.05)
            assert response.abandon() == b"abcdef"
            assert response._conn.closed and upstream.pool._idle == []
            assert response.abandon() == b""

    run(main)


def test_idle_connections_are_bounded():
    async def main() -> None:
        async with Server(lambda upstream: upstream.transport.write(OK)) as upstream:
            upstream.pool.max_idle = 2
            responses = await asyncio.gather(*(upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1)
                                               for _ in range(4)))
            for response in responses:
                await response.read()
            assert len(upstream.pool._idle) == 2

    run(main)


def test_pools_are_per_origin():
    pools = UpstreamPools()
    a = pools.get(Origin.parse("http://h:1/v1"))
    assert pools.get(Origin.parse("http://h:1/other")) is a
    assert pools.get(Origin.parse("https://h:1/v1")) is not a
    assert Origin.parse("https://h/v1").host_header == b"h" and Origin.parse("http://h:8080").host_header == b"h:8080"
    with pytest.raises(ValueError):
        Origin.parse("ftp://h")


def test_total_s_ends_a_stream_that_never_pauses():
    """F: chunks every 10 ms never trip idle_s; total_s still ends the exchange."""
    def drip(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        loop = asyncio.get_running_loop()

        def tick() -> None:
            if not upstream.transport.is_closing():
                upstream.transport.write(b"1\r\nx\r\n")
                loop.call_later(0.01, tick)
        tick()

    async def main() -> None:
        async with Server(drip) as upstream:
            loop = asyncio.get_running_loop()
            started = loop.time()
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1, total_s=0.3)
            received = []
            with pytest.raises(UpstreamTimeout, match="total_s"):
                async for chunk in response.iter_body():
                    received.append(chunk)
            assert 0.29 <= loop.time() - started < 0.6  # libuv keeps time in whole milliseconds
            assert len(received) >= 10 and upstream.pool._idle == []

    run(main)


def test_total_s_bounds_the_wait_for_headers_too():
    async def main() -> None:
        async with Server(lambda upstream: None) as upstream:
            with pytest.raises(UpstreamTimeout, match="total_s"):
                await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=5, idle_s=5, total_s=0.05)

    run(main)


def test_a_finished_exchange_is_not_cut_by_its_deadline():
    async def main() -> None:
        async with Server(lambda upstream: upstream.transport.write(OK)) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1, total_s=0.05)
            assert await response.read() == b"{}"
            await asyncio.sleep(0.1)
            assert len(upstream.pool._idle) == 1 and not upstream.pool._idle[0].closed
            assert await upstream.get() == b"{}" and upstream.accepted == 1

    run(main)


_FIXED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"7\r\ndata: 1\r\n7\r\ndata: 2\r\n0\r\n\r\n")
_CLOSING = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


async def _exchange_all(answers: list[bytes]) -> tuple[int, list[bytes]]:
    """Send one request per answer through one pool; returns (connections the server accepted, bodies)."""
    accepted = 0
    queue = list(answers)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        while queue:
            if not await reader.readuntil(b"\r\n\r\n"):
                return
            answer = queue.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                writer.close()
                return

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = OriginPool(Origin.parse(f"http://127.0.0.1:{port}/v1"))
    bodies = []
    try:
        for _ in answers:
            response = await pool.request(b"GET /v1/x HTTP/1.1\r\nHost: t\r\n\r\n", b"", connect_s=2, first_byte_s=2, idle_s=2)
            bodies.append(await response.read())
    finally:
        pool.close()
        server.close()
    return accepted, bodies


def test_fixed_length_and_chunked_responses_reuse_one_connection():
    accepted, bodies = asyncio.run(_exchange_all([_FIXED, _CHUNKED, _FIXED, _CHUNKED]))
    assert bodies == [b"{}", b"data: 1data: 2", b"{}", b"data: 1data: 2"]
    assert accepted == 1


def test_connection_close_is_honoured():
    accepted, bodies = asyncio.run(_exchange_all([_CLOSING, _FIXED]))
    assert bodies == [b"{}", b"{}"]
    assert accepted == 2


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_s_still_bounds_a_silence_after_many_chunks(loop):
    """One timer serves every wait: after 20 chunks (each a wait shorter than idle_s, none timed on
    its own) a silence still ends the body within about idle_s, not at the timer's first due time."""
    def drip_then_stall(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        ev = asyncio.get_running_loop()
        for i in range(20):
            ev.call_later(0.01 * i, lambda: upstream.transport.is_closing() or upstream.transport.write(b"1\r\nx\r\n"))

    async def main() -> None:
        async with Server(drip_then_stall) as upstream:
            ev = asyncio.get_running_loop()
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=0.08)
            received = b""
            with pytest.raises(UpstreamTimeout, match="sent nothing for"):
                async for chunk in response.iter_body():
                    received += chunk
                    last = ev.time()
            assert received == b"x" * 20  # every chunk was relayed before the timeout
            assert 0.07 <= ev.time() - last < 0.2
            assert upstream.pool._idle == []

    run(main, loop)


def test_a_body_that_came_with_its_headers_arms_no_timer_and_chunks_that_came_together_are_one():
    def burst(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n1\r\nb\r\n")
        asyncio.get_running_loop().call_later(0.05, upstream.transport.write, b"1\r\nc\r\n0\r\n\r\n")

    async def main() -> None:
        async with Server(lambda upstream: upstream.transport.write(OK)) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1, total_s=5)
            assert response._timer is None and await response.read() == b"{}"
        async with Server(burst) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1, total_s=5)
            assert response._timer is not None  # the body is still coming: bounded
            chunks = [chunk async for chunk in response.iter_body()]
            assert chunks == [b"ab", b"c"]  # what was there went as one; nothing waited for what came later
            assert response._timer is None and len(upstream.pool._idle) == 1

    run(main)


# -- Response.relay: chunks handed on from the read callback ------------------------------------

@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_relay_hands_each_chunk_to_the_sink_from_the_read_callback_in_order(loop):
    """The sink runs inside data_received (no task step between a read and the sink), and every
    chunk, those that came with the headers included, arrives once and in order."""
    def drip(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nc0\r\n")
        ev = asyncio.get_running_loop()
        for i in range(1, 30):
            ev.call_later(0.002 * i, upstream.transport.write, b"2\r\nc%d\r\n" % (i % 10))
        ev.call_later(0.07, upstream.transport.write, b"0\r\n\r\n")

    async def main() -> None:
        async with Server(drip) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1)
            received, in_callback = [], []

            def sink(chunk: bytes) -> bool:
                received.append(chunk)
                in_callback.append(response._conn.sink is sink)
                return True

            async def drain() -> None:
                raise AssertionError("a sink that keeps up is never drained")

            await response.relay(sink, drain)
            assert b"".join(received) == b"".join(b"c%d" % (i % 10) for i in range(30))
            assert sum(in_callback) >= 20  # all but the chunks that came with the headers or raced the install
            assert len(upstream.pool._idle) == 1 and response._conn.sink is None

    run(main, loop)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_relay_drains_what_a_queueing_sink_took_from_the_read_that_ended_the_body(loop):
    """A sink that queues and asks for a drain every time (plain ASGI send): when the last chunk
    and the body's end come in one read, the relay still drains it before it returns."""
    def end_in_one_read(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        asyncio.get_running_loop().call_later(0.05, upstream.transport.write, b"4\r\nlast\r\n0\r\n\r\n")

    async def main() -> None:
        async with Server(end_in_one_read) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1)
            queued: list[bytes] = []
            sent: list[bytes] = []

            def sink(chunk: bytes) -> bool:
                queued.append(chunk)
                return False

            async def drain() -> None:
                sent.extend(queued)
                queued.clear()

            await response.relay(sink, drain)
            assert b"".join(sent) == b"last" and not queued

    run(main, loop)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_relay_with_a_hold_reads_a_paced_stream_a_few_chunks_at_a_time_and_never_holds_the_first(loop):
    """A chunk every 2 ms, a 20 ms hold: the first chunk goes on at once, then each read takes
    what came meanwhile (one sink call for all of it), every byte once and in order, the last one
    no later than a hold after it came; the connection goes back to the pool reading again."""
    sent: list[float] = []

    def drip(upstream: Upstream) -> None:
        ev = asyncio.get_running_loop()
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(60):
            ev.call_later(0.05 + 0.002 * i, lambda i=i: (sent.append(ev.time()), upstream.transport.write(b"2\r\nc%d\r\n" % (i % 10))))
        ev.call_later(0.05 + 0.002 * 60, upstream.transport.write, b"0\r\n\r\n")

    async def main() -> None:
        async with Server(drip) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1)
            received: list[tuple[float, bytes]] = []
            ev = asyncio.get_running_loop()

            def sink(chunk: bytes) -> bool:
                received.append((ev.time(), chunk))
                return True

            async def drain() -> None:
                raise AssertionError("a sink that keeps up is never drained")

            await response.relay(sink, drain, hold_s=0.02)
            assert b"".join(chunk for _, chunk in received) == b"".join(b"c%d" % (i % 10) for i in range(60))
            assert received[0][0] - sent[0] < 0.015  # the first chunk is not held
            assert len(received) <= 15  # 60 chunks over ~120 ms, one read per 20 ms hold
            assert received[-1][0] - sent[-1] < 0.02 + 0.05  # the hold, and a loaded machine's slack
            conn = response._conn
            assert len(upstream.pool._idle) == 1 and conn._held is None and conn.hold_s == 0
            # back in the pool reading: the next exchange on the connection works, held nothing
            again = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1)
            assert again._conn is conn and conn.hold_s == 0
            again.abandon()

    run(main, loop)


def test_relay_waits_for_a_stalled_sink_and_pauses_the_upstream_meanwhile():
    """A sink that says "not now" gets nothing more until drain() returns; the 4 MiB that keep
    coming queue only until reading pauses (a read past the high-water mark): the upstream stalls,
    memory does not grow; after the drain everything arrives, in order."""
    chunk_count, piece = 4000, b"%04d" + b"." * 1020

    async def send(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, chunk_count, 100):
            upstream.transport.write(b"".join(b"400\r\n" + piece % n + b"\r\n" for n in range(i, i + 100)))
            await asyncio.sleep(0.001)
        upstream.transport.write(b"0\r\n\r\n")

    def flood(upstream: Upstream) -> None:
        tasks.append(asyncio.get_running_loop().create_task(send(upstream)))

    tasks: list[asyncio.Task] = []

    async def main() -> None:
        async with Server(flood) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1)
            received: list[bytes] = []
            gate = asyncio.Event()
            stalled_at = []

            def sink(chunk: bytes) -> bool:
                assert not stalled_at or gate.is_set(), "the sink was fed while it waited for drain"
                received.append(chunk)
                # "not now" from inside the read callback (past the chunks that came with the headers)
                return gate.is_set() or response._conn.sink is not sink

            async def drain() -> None:
                if not gate.is_set():
                    stalled_at.append(len(received))
                    await asyncio.sleep(0.2)  # the upstream sends everything it can meanwhile
                    conn = response._conn
                    assert conn._paused and not conn.complete
                    assert sum(map(len, conn.chunks)) < 512 * 1024  # of 4 MiB
                    gate.set()

            await response.relay(sink, drain)
            assert len(stalled_at) == 1
            assert b"".join(received) == b"".join(piece % i for i in range(chunk_count))
            assert len(upstream.pool._idle) == 1

    run(main)


def test_relay_keeps_idle_s_and_raises_a_drop_after_the_chunks_that_came():
    def stall(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        ev = asyncio.get_running_loop()
        for i in range(10):
            ev.call_later(0.02 * i, upstream.transport.write, b"1\r\nx\r\n")

    def drop(upstream: Upstream) -> None:
        upstream.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        ev = asyncio.get_running_loop()
        ev.call_later(0.01, upstream.transport.write, b"1\r\ny\r\n")
        ev.call_later(0.03, upstream.transport.close)

    async def drain() -> None:
        return None

    async def main() -> None:
        ev = asyncio.get_running_loop()
        async with Server(stall) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=0.08)
            received, times = [], []
            with pytest.raises(UpstreamTimeout, match="sent nothing for"):
                await response.relay(lambda c: received.append(c) or times.append(ev.time()) or True, drain)
            assert b"".join(received) == b"x" * 10  # 20 ms apart: each gap under idle_s
            assert 0.07 <= ev.time() - times[-1] < 0.2
            assert upstream.pool._idle == []
        async with Server(drop) as upstream:
            response = await upstream.pool.request(GET, b"", connect_s=1, first_byte_s=1, idle_s=1)
            received = []
            with pytest.raises(UpstreamClosed):
                await response.relay(lambda c: received.append(c) or True, drain)
            assert received == [b"y"]

    run(main)
