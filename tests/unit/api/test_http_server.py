"""proxy.api.http_server over raw sockets: slow and lying clients are cut off, refusals are OpenAI-shaped."""
from __future__ import annotations

import json
import socket
import time

import pytest
import websockets.sync.client as ws_client

from proxy.config.schema import ServerSettings
from tests.support import ServerThread

LIMITS = ServerSettings(header_timeout_s=0.4, body_timeout_s=0.4, keep_alive_s=5, max_connections=400,
                        max_header_bytes=8192)


async def echo(scope, receive, send) -> None:
    """Answers with the size of the body it read; what it saw of a cut-off body goes to ``seen``."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})
        return
    if scope["type"] != "http":
        return
    size, message = 0, {"more_body": True}
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            echo.seen.append("disconnect")
            return
        size += len(message.get("body", b""))
    body = b'{"size":%d}' % size
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


echo.seen = []


@pytest.fixture
def server():
    echo.seen.clear()
    with ServerThread(echo, lifespan="off", server=LIMITS) as running:
        yield running


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def error_of(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert b"content-type: application/json" in head.lower() and b"connection: close" in head.lower()
    return status, json.loads(body)["error"]


def test_well_behaved_requests_are_untouched(server):
    with connect(server) as sock:
        for body in (b"", b"x" * 100_000, b"{}"):
            sock.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"size":%d}' % len(body))
        time.sleep(LIMITS.header_timeout_s * 2)  # an idle keep-alive connection is the keep-alive timer's business
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n")  # one request in two segments, well within the timeout
        time.sleep(0.05)
        sock.sendall(b"\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_slowloris_connections_are_answered_408_and_closed(server):
    """300 clients dribbling header lines: all cut off at header_timeout_s, none kept open."""
    socks = [connect(server) for _ in range(300)]
    started = time.monotonic()
    try:
        for sock in socks:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n")
        for _ in range(3):
            time.sleep(0.1)
            for sock in socks:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass
        answers = [read_all(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert time.monotonic() - started < 2.5
    for answer in answers:
        status, error = error_of(answer)
        assert status == 408 and (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
        assert "server.header_timeout_s" in error["message"]


def test_a_silent_connection_is_closed_without_an_answer(server):
    with connect(server) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""
        assert LIMITS.header_timeout_s - 0.05 <= time.monotonic() - started < 2


def test_a_lying_content_length_is_cut_off_and_the_app_sees_a_disconnect(server):
    with connect(server) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        started = time.monotonic()
        status, error = error_of(read_all(sock))
        assert time.monotonic() - started < 2
    assert status == 408 and "server.body_timeout_s" in error["message"]
    deadline = time.monotonic() + 2
    while not echo.seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert echo.seen == ["disconnect"]


def test_a_body_trickling_forever_is_bounded_as_a_whole(server):
    with connect(server) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        started = time.monotonic()
        try:
            for _ in range(20):  # one byte every 50 ms never leaves a long gap
                sock.sendall(b"x")
                time.sleep(0.05)
        except OSError:
            pass
        answer = read_all(sock)
    assert error_of(answer)[0] == 408 and time.monotonic() - started < 1.5


def test_parser_rejects_are_an_openai_400(server):
    with connect(server) as sock:
        sock.sendall(b"NOT A REQUEST LINE\r\n\r\n")
        status, error = error_of(read_all(sock))
    assert status == 400
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_http_request", None)
    assert error["message"].startswith("Invalid HTTP request: ")


def test_oversized_headers_are_a_431(server):
    with connect(server) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 10_000)
        status, error = error_of(read_all(sock))
    assert status == 431 and error["code"] == "request_headers_too_large" and "8192" in error["message"]


def test_open_connections_are_capped_per_worker():
    echo.seen.clear()
    limits = ServerSettings(max_connections=5, header_timeout_s=5)
    with ServerThread(echo, lifespan="off", server=limits) as server:
        held = [connect(server) for _ in range(5)]
        time.sleep(0.1)
        with connect(server) as extra:
            status, error = error_of(read_all(extra))
        assert status == 503 and error["code"] == "too_many_connections"
        held.pop().close()
        time.sleep(0.1)
        with connect(server) as sock:  # a slot came free
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        for sock in held:
            sock.close()


def test_a_websocket_outlives_the_header_timeout(server):
    with ws_client.connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        time.sleep(LIMITS.header_timeout_s + LIMITS.body_timeout_s + 0.2)
        ws.send("still here")
        assert ws.recv(timeout=2) == "still here"


def test_client_stream_writes_chunks_of_a_chunked_response_between_asgi_messages_and_keeps_the_connection():
    """The scope's ClientStream: not ready before the response starts or for a sized one; once a
    chunked response started, its writes are well-framed chunks in order with what ASGI send wrote,
    and the connection stays usable for the next request (keep-alive)."""
    from proxy.api.http_server import CLIENT_STREAM
    seen = []

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        stream = scope["extensions"][CLIENT_STREAM]
        seen.append(stream.ready())
        sized = scope["path"] == "/sized"
        headers = [(b"content-length", b"2")] if sized else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        seen.append(stream.ready())
        if sized:
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        seen.append(stream.write(b"bb") and stream.write(b"ccc"))
        await stream.drain()
        await send({"type": "http.response.body", "body": b"dddd", "more_body": False})
        seen.append(stream.ready())

    with ServerThread(app, lifespan="off", server=LIMITS) as running, socket.create_connection(("127.0.0.1", running.port)) as sock:
        sock.sendall(b"GET /chunked HTTP/1.1\r\nhost: t\r\n\r\nGET /sized HTTP/1.1\r\nhost: t\r\n\r\n")
        sock.settimeout(3)
        received = b""
        while not received.endswith(b"\r\n\r\nok"):
            received += sock.recv(65536)
    first, _, second = received.partition(b"0\r\n\r\n")
    assert first.split(b"\r\n\r\n", 1)[1] == b"1\r\na\r\n2\r\nbb\r\n3\r\nccc\r\n4\r\ndddd\r\n"
    assert second.startswith(b"HTTP/1.1 200")
    assert seen == [False, True, True, False, False, False]
