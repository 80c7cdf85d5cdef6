"""The upstream keep-alive pool reuses connections exactly when HTTP/1.1 allows it."""
from __future__ import annotations

import asyncio

from proxy.upstream.http_pool import Origin, OriginPool

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
