"""An emulated WAN link: a userspace TCP relay with a round-trip time and a bandwidth cap each way.

Benchmarks put it between two endpoints on one machine where netem is unavailable (this
machine's kernel has no ``sch_netem``: ``tc qdisc add ... netem`` answers "Specified qdisc kind
is unknown"). Each direction of each connection is a delay line: a chunk read at time t is
serialised onto the link when the link is free, at the direction's rate (a token bucket with no
burst: ``bytes / rate`` seconds per chunk, in 16 KiB segments so a large request arrives
progressively), and is delivered half the RTT after its last byte left. One timer per
direction delivers whatever is due, in order — never a sleep per chunk or per connection — so a
stream of small events keeps its spacing and a large request pays its transmission time.
A new connection pays one RTT (the TCP handshake) before its first byte leaves; a TLS
handshake inside it then pays its own round trips through the delay lines. A half-close (EOF)
and a close travel the line behind the data sent before them.

Counters (``counters[UP]``, ``[DOWN]``, ``[CONNECTIONS]``) are a plain sequence of ints the
caller may put in shared memory, so a benchmark reads the bytes each turn sent upstream while
the relay runs in its own process. Not modelled: loss, reordering, TCP slow start.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, MutableSequence

UP, DOWN, CONNECTIONS = 0, 1, 2
SEGMENT = 16 * 1024


class _Line:
    """One direction of one connection: segments queued with their arrival time, written in order."""

    __slots__ = ("_delay", "_ended", "_free_at", "_loop", "_queue", "_rate", "_timer", "out")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float, rate: float, usable_at: float,
                 ended: Callable[[], None]) -> None:
        self._loop = loop
        self._delay = delay_s
        self._rate = rate  # bytes per second; 0 = no cap
        self._queue: deque[tuple[float, bytes | bool]] = deque()  # False: the sender's EOF, True: its close
        self._ended = ended  # called once the EOF reached the far end
        self._free_at = usable_at  # when the link can start sending the next segment
        self._timer: asyncio.TimerHandle | None = None
        self.out: asyncio.Transport | None = None  # the far end, once connected

    def push(self, data: bytes) -> None:
        now = self._loop.time()
        step = SEGMENT if self._rate else len(data)
        for i in range(0, len(data), step):
            segment = data[i : i + step]
            self._free_at = max(now, self._free_at) + (len(segment) / self._rate if self._rate else 0.0)
            self._queue.append((self._free_at + self._delay, segment))
        self.arm()

    def finish(self, close: bool) -> None:
        """The sender half-closed (``close`` False) or closed: pass it on behind the data before it."""
        self._queue.append((max(self._loop.time(), self._free_at) + self._delay, close))
        self.arm()

    def arm(self) -> None:
        if self._timer is None and self._queue and self.out is not None:
            self._timer = self._loop.call_at(self._queue[0][0], self._deliver)

    def _deliver(self) -> None:
        self._timer = None
        out = self.out
        assert out is not None
        now = self._loop.time()
        due = []
        end: bool | None = None
        while self._queue and self._queue[0][0] <= now:
            segment = self._queue.popleft()[1]
            if isinstance(segment, bool):
                end = segment
                break
            due.append(segment)
        if due and not out.is_closing():
            out.write(b"".join(due))
        if end is None:
            self.arm()
            return
        self._queue.clear()
        if end or out.is_closing() or not out.can_write_eof():
            out.close()
        else:
            out.write_eof()
        self._ended()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Far(asyncio.Protocol):
    """The relay's connection to the target: what it reads travels down to the client."""

    def __init__(self, near: _Near) -> None:
        self.near = near

    def data_received(self, data: bytes) -> None:
        self.near.link.counters[DOWN] += len(data)
        self.near.down.push(data)

    def eof_received(self) -> bool:
        self.near.down.finish(close=False)
        return True  # keep sending what the client still sends

    def connection_lost(self, exc: Exception | None) -> None:
        self.near.down.finish(close=True)


class _Near(asyncio.Protocol):
    """A client's connection to the relay: what it reads travels up to the target."""

    def __init__(self, link: WanLink) -> None:
        self.link = link
        loop = asyncio.get_running_loop()
        handshake_done = loop.time() + link.rtt_s  # SYN out, SYN-ACK back: then the first byte may leave
        half, rate = link.rtt_s / 2, link.bytes_per_s
        self.up = _Line(loop, half, rate, handshake_done, self._ended)
        self.down = _Line(loop, half, rate, handshake_done, self._ended)
        self.transport: asyncio.Transport | None = None
        self._dial: asyncio.Task[None] | None = None
        self._open_lines = 2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.down.out = transport
        self.link.counters[CONNECTIONS] += 1
        self._dial = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        host, port = self.link.target
        try:
            far, _ = await asyncio.get_running_loop().create_connection(lambda: _Far(self), host, port)
        except OSError:
            assert self.transport is not None
            self.transport.abort()
            return
        self.up.out = far
        self.up.arm()

    def data_received(self, data: bytes) -> None:
        self.link.counters[UP] += len(data)
        self.up.push(data)

    def eof_received(self) -> bool:
        self.up.finish(close=False)
        return True  # keep delivering what the target still answers

    def _ended(self) -> None:
        """One direction delivered its end; once both have, nothing more can flow: close both ends."""
        self._open_lines -= 1
        if self._open_lines == 0:
            for line in (self.up, self.down):
                if line.out is not None:
                    line.out.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.up.finish(close=True)
        if self.up.out is None and self._dial is not None:
            self._dial.cancel()
            self.up.cancel()


class WanLink:
    """Relays every connection accepted on a local port to ``target`` across the emulated link."""

    def __init__(self, target: tuple[str, int], rtt_ms: float, mbit_per_s: float,
                 counters: MutableSequence[int] | None = None) -> None:
        if not (0 <= rtt_ms < math.inf and 0 <= mbit_per_s < math.inf):
            raise ValueError("rtt_ms and mbit_per_s must be finite and >= 0 (0 = no delay / no cap)")
        self.target = target
        self.rtt_s = rtt_ms / 1000
        self.bytes_per_s = mbit_per_s * 1e6 / 8
        self.counters: MutableSequence[int] = counters if counters is not None else [0, 0, 0]
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 = a free port); returns the port."""
        self._server = await asyncio.get_running_loop().create_server(lambda: _Near(self), host, port)
        return self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def run_forever(target: tuple[str, int], listen_port: int, rtt_ms: float, mbit_per_s: float,
                counters: MutableSequence[int]) -> None:
    """Entry point for a relay in its own process (multiprocessing), counting into shared memory."""
    async def main() -> None:
        await WanLink(target, rtt_ms, mbit_per_s, counters).start(port=listen_port)
        await asyncio.Event().wait()

    asyncio.run(main())
