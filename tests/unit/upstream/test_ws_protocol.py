"""proxy.upstream.ws_protocol against a scripted peer that writes exactly the bytes a test asks
for: frames split across reads, batched in one read, fragmented, interleaved with pings,
closed or cut off mid-frame, oversized or malformed; the handshake and TLS. Driven on uvloop
(what the proxy runs) and, where event-loop details matter, on the stdlib loop too."""
from __future__ import annotations

import asyncio
import ssl
import subprocess
import zlib
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from proxy.call import UpstreamClosed, UpstreamConnectError, UpstreamError
from proxy.upstream import ws_protocol
from proxy.upstream.ws_protocol import FrameError, connect
from tests.unit.upstream.ws_peer import (
    Peer,
    frame,
    read_frame,
    read_frame_bits,
    switching,
)

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def run(main: Callable[[], Awaitable[object]], loop: str = "uvloop") -> object:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(asyncio.wait_for(main(), 10))  # a hang fails the test instead of the suite


def dribble(*chunks: bytes) -> Callable:
    """A script writing each chunk as its own TCP segment (drained, then a pause)."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.02)
        await reader.read()  # until the client closes
    return script


@pytest.mark.parametrize("loop", LOOPS)
def test_frames_split_across_reads_are_reassembled(loop):
    big, mid = b"x" * 70_000, b"m" * 200  # 8- and 2-byte lengths: each header is split below
    wire = frame(b'{"type":"a"}') + frame(big) + frame(mid) + frame(b"")
    cut = len(wire) - 2 - 204  # where the 200-byte frame starts
    pieces = [wire[:1], wire[1:5], wire[5:16], wire[16:40], wire[40:30_000], wire[30_000:cut + 3], wire[cut + 3:-1],
              wire[-1:]]

    async def main():
        async with Peer(dribble(*pieces)) as peer:
            ws = await connect(peer.url, {}, 2)
            messages = [await ws.recv() for _ in range(4)]
            ws.close()
            return messages
    assert run(main, loop) == [b'{"type":"a"}', big, mid, b""]


def test_several_frames_in_one_read_are_handed_over_together():
    events = [b'{"type":"response.output_text.delta","delta":"%d"}' % i for i in range(5)]

    async def main():
        async with Peer(dribble(b"".join(frame(e) for e in events))) as peer:
            ws = await connect(peer.url, {}, 2)
            await ws.readable()
            batch = list(ws.messages)  # one wake-up for the whole read
            ws.close()
            return batch
    assert run(main) == events


def test_a_fragmented_message_with_a_ping_inside_is_one_message_and_the_ping_is_answered():
    pongs = []

    async def script(reader, writer):
        writer.write(frame(b'{"type":', fin=False) + frame(b"hi", opcode=0x9))
        await writer.drain()
        pongs.append(await read_frame(reader))  # answered mid-message
        writer.write(frame(b'"x",', opcode=0x0, fin=False) + frame(b'"n":1}', opcode=0x0) + frame(b"after"))
        await reader.read()

    async def main():
        async with Peer(script) as peer:
            ws = await connect(peer.url, {}, 2)
            messages = [await ws.recv(), await ws.recv()]
            ws.close()
            return messages
    assert run(main) == [b'{"type":"x","n":1}', b"after"]
    assert pongs == [(0xA, b"hi")]


def test_a_close_mid_stream_delivers_what_came_before_then_ends_with_the_code():
    replies = []

    async def script(reader, writer):
        writer.write(frame(b"one") + frame(b"two") + frame((1001).to_bytes(2, "big") + b"going away", opcode=0x8))
        replies.append(await read_frame(reader))
        assert await reader.read() == b"", "the client closes the TCP connection after its close reply"

    async def main():
        async with Peer(script) as peer:
            ws = await connect(peer.url, {}, 2)
            got = [await ws.recv(), await ws.recv()]
            with pytest.raises(UpstreamClosed, match="1001, going away"):
                await ws.recv()
            assert not ws.open
            with pytest.raises(UpstreamClosed):
                ws.send_text(b"{}")  # nothing goes out on a closed socket
            await peer.done
            return got
    assert run(main) == [b"one", b"two"]
    assert replies == [(0x8, (1001).to_bytes(2, "big"))]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_peer_that_dies_mid_frame_ends_the_read_without_a_hang(loop):
    async def script(reader, writer):
        writer.write(frame(b"whole") + frame(b"y" * 1000)[:300])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async def main():
        async with Peer(script) as peer:
            ws = await connect(peer.url, {}, 2)
            assert await ws.recv() == b"whole"
            with pytest.raises(UpstreamClosed):
                await ws.recv()
            return ws.open
    assert run(main, loop) is False


@pytest.mark.parametrize("wire", [
    frame(b"", length=2**40),                                   # declared far past the limit: refused before buffering it
    frame(b"a" * 600, fin=False) + frame(b"b" * 600, opcode=0x0),  # fragments adding up past it
], ids=["declared", "fragments"])
def test_an_oversized_message_fails_the_socket_with_1009(wire):
    assert failed_by(wire, "exceeds 1000 bytes", max_size=1000) == [(0x8, (1009).to_bytes(2, "big"))]


def failed_by(wire: bytes, match: str | None = None, answer: Callable[[bytes], bytes] = switching,
              **options: object) -> list[tuple[int, bytes]]:
    """The frames Laneway answers ``wire`` with when a peer sends it behind a good message: that
    message is still read, then the FrameError (matching ``match``), and the socket is over."""
    closes = []

    async def script(reader, writer):
        writer.write(frame(b"ok") + wire)
        closes.append(await read_frame(reader))
        await reader.read()

    async def main():
        async with Peer(script, answer=answer) as peer:
            ws = await connect(peer.url, {}, 2, **options)
            assert await ws.recv() == b"ok"  # what came before the violation is still read
            with pytest.raises(FrameError, match=match):
                await ws.recv()
            await peer.done
            assert not ws.open
    run(main)
    return closes


@pytest.mark.parametrize("wire", [
    frame(b"x", mask=b"abcd"),                    # servers never mask
    frame(b"x", rsv=0x40),                        # compressed, but no extension was negotiated
    frame(b"x", opcode=0x3),                      # reserved opcode
    frame(b"x", opcode=0x0),                      # continuation with no message started
    frame(b"a", fin=False) + frame(b"b"),         # a new message inside a fragmented one
    frame(b"p", opcode=0x9, fin=False),           # fragmented control frame
    frame(b"p" * 126, opcode=0x9),                # control frame over 125 bytes
], ids=["masked", "rsv", "opcode", "continuation", "interleaved", "fragmented-ping", "long-ping"])
def test_a_protocol_violation_fails_the_socket_with_1002(wire):
    assert failed_by(wire) == [(0x8, (1002).to_bytes(2, "big"))]


def test_client_frames_are_masked_text_of_every_length_class():
    received = []

    async def script(reader, writer):
        for _ in range(3):
            received.append(await read_frame(reader))
        await reader.read()

    payloads = [b"s" * 10, b"m" * 300, b"l" * 70_000]

    async def main():
        async with Peer(script) as peer:
            ws = await connect(peer.url, {}, 2)
            for payload in payloads:
                ws.send_text(payload)
            await asyncio.sleep(0.1)
            ws.close()
            await peer.done
    run(main)
    assert received == [(0x1, p) for p in payloads]


def test_the_handshake_carries_the_headers_and_frames_behind_the_101_are_read():
    async def main():
        answer = lambda head: switching(head) + frame(b"early")
        async with Peer(dribble(), answer=answer) as peer:
            ws = await connect(peer.url + "?model=x", {"Authorization": "Bearer sk-test", "OpenAI-Beta": "b"}, 2)
            first = await ws.recv()
            ws.close()
            return peer.heads[0], first
    head, first = run(main)
    assert head.startswith(b"GET /v1/responses?model=x HTTP/1.1\r\n") and first == b"early"
    for line in (b"Authorization: Bearer sk-test", b"OpenAI-Beta: b", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13"):
        assert line in head.split(b"\r\n")


@pytest.mark.parametrize(("answer", "match"), [
    (lambda head: b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", "401 Unauthorized"),
    (lambda head: switching(head).replace(b"Sec-WebSocket-Accept: ", b"Sec-WebSocket-Accept: x"), "Accept"),
    (lambda head: switching(head, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"), "extension"),
    (lambda head: b"HTTP/1.1 101 OK\r\nX: " + b"a" * 70_000, "too large"),
    (None, "timed out"),  # accepted the TCP connection, never answered
], ids=["401", "accept", "extension", "huge-head", "silent"])
def test_a_handshake_that_does_not_open_a_websocket_is_a_connect_error(answer, match):
    async def main():
        async with Peer(dribble(), answer=answer) as peer:
            with pytest.raises(UpstreamConnectError, match=match):
                await connect(peer.url, {}, 0.5)
    run(main)


def test_a_peer_that_hangs_up_during_the_handshake_is_a_connect_error():
    async def main():
        async with Peer(answer=lambda head: b"HTTP/1.1 101 Switching") as peer:  # then the connection closes
            with pytest.raises(UpstreamConnectError, match="closed"):
                await connect(peer.url, {}, 2)
    run(main)


def test_an_unreachable_port_is_a_connect_error():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamConnectError, match="cannot connect"):
            await connect(f"ws://127.0.0.1:{port}/v1/responses", {}, 1)
    run(main)


def test_a_silent_peer_is_pinged_and_dropped_a_live_one_kept(monkeypatch):
    monkeypatch.setattr(ws_protocol, "PING_INTERVAL_S", 0.1)
    pings = []

    async def answering(reader, writer):
        while True:
            opcode, payload = await read_frame(reader)
            if opcode != 0x9:
                return
            pings.append(payload)
            writer.write(frame(payload, opcode=0xA))

    async def main():
        async with Peer(answering) as live, Peer(dribble()) as silent:
            kept, dropped = await connect(live.url, {}, 2), await connect(silent.url, {}, 2)
            await asyncio.sleep(0.45)
            state = kept.open, dropped.open
            with pytest.raises(UpstreamClosed, match="no ping"):
                await dropped.recv()
            kept.close()
            return state
    assert run(main) == (True, False)
    assert len(pings) >= 3


def test_close_sends_a_normal_close_frame():
    got = []

    async def script(reader, writer):
        got.append(await read_frame(reader))
        got.append(await reader.read())

    async def main():
        async with Peer(script) as peer:
            ws = await connect(peer.url, {}, 2)
            ws.close()
            await peer.done
            return ws.open
    assert run(main) is False
    assert got == [(0x8, (1000).to_bytes(2, "big")), b""]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A self-signed certificate for localhost, and a client context that trusts only it."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", d / "key.pem", "-out", d / "cert.pem"],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    return server, ssl.create_default_context(cafile=d / "cert.pem")


def test_wss_verifies_the_provider_certificate(tls):
    server, client = tls

    async def main():
        async with Peer(dribble(frame(b"secure")), tls=server) as peer:
            ws = await connect(peer.url, {}, 2, ssl_context=client)
            first = await ws.recv()
            ws.close()
            with pytest.raises(UpstreamConnectError, match="cannot connect"):
                await connect(peer.url, {}, 2)  # the default trust store does not know this certificate
            return first
    assert run(main) == b"secure"


def test_not_a_websocket_url_is_refused():
    async def main():
        with pytest.raises(UpstreamError, match="not a ws"):
            await connect("http://127.0.0.1:1/v1/responses", {}, 1)
    run(main)


def test_held_messages_do_not_wake_the_reader_and_a_close_behind_them_is_the_error():
    async def script(reader, writer):
        for piece in (frame(b"p1"), frame(b"p2"), frame(b"out") + frame(b"p3"), frame(b"p4"), frame(b"", opcode=0x8)):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        await reader.read()

    async def main():
        async with Peer(script) as peer:
            ws = await connect(peer.url, {}, 2)
            ws.hold = lambda data: data.startswith(b"p")
            waiting = asyncio.ensure_future(ws.readable())
            await asyncio.sleep(0.07)
            early = waiting.done(), list(ws.messages)  # p1 and p2 are queued, the reader still waits
            await waiting  # for the read that brings "out"
            first = [ws.messages.popleft() for _ in range(3)]
            with pytest.raises(UpstreamClosed):
                await ws.readable()  # p3 and p4 are held back, so the close is what the reader gets
            return early, first, list(ws.messages)
    early, first, left = run(main)
    assert early == (False, [b"p1", b"p2"])
    assert first == [b"p1", b"p2", b"out"] and left == [b"p3", b"p4"]


# -- permessage-deflate --------------------------------------------------------------------------
DEFLATE = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"


def deflating(extra: bytes = DEFLATE) -> Callable[[bytes], bytes]:
    return lambda head: switching(head, extra)


def compressed(payload: bytes, compressor=None) -> bytes:
    """A provider's compressed message body: raw deflate, sync-flushed, the 00 00 ff ff tail stripped."""
    compressor = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


TURN = b'{"type":"response.create","instructions":"' + b"Be a careful coding agent. " * 1000 + b'"}'


def test_deflate_is_offered_only_when_asked_and_accepted_both_ways_with_context_takeover():
    received = []

    async def script(reader, writer):
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        writer.write(frame(compressed(TURN, compressor), rsv=0x40) + frame(compressed(TURN, compressor), rsv=0x40)
                     + frame(b"plain"))  # compression is per message: a plain one in between is fine
        inflater = zlib.decompressobj(-15)
        for _ in range(2):
            b0, data = await read_frame_bits(reader)
            received.append((b0, len(data), inflater.decompress(data + b"\x00\x00\xff\xff")))
        await reader.read()

    async def main():
        async with Peer(script, answer=deflating()) as peer:
            ws = await connect(peer.url, {}, 2, deflate=True)
            got = [await ws.recv() for _ in range(3)]
            ws.send_text(TURN)
            ws.send_text(TURN)
            await asyncio.sleep(0.1)
            ws.close()
            await peer.done
            return peer.heads[0], got
    head, got = run(main)
    assert b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits" in head.split(b"\r\n")
    assert got == [TURN, TURN, b"plain"]
    (b0, first, one), (_, second, two) = received
    assert b0 == 0xC1 and one == two == TURN  # FIN + RSV1 + text
    assert second < first < len(TURN) / 20  # the resent turn is back-references into the window


def test_without_the_option_nothing_is_offered():
    async def main():
        async with Peer(dribble()) as peer:
            ws = await connect(peer.url, {}, 2)
            ws.close()
            return peer.heads[0], ws.deflate
    head, deflate = run(main)
    assert b"sec-websocket-extensions" not in head.lower() and deflate is None


def test_a_provider_that_declines_gets_plain_frames_and_may_not_send_compressed_ones():
    frames, closes = [], []

    async def script(reader, writer):
        frames.append(await read_frame_bits(reader))
        writer.write(frame(compressed(b"{}"), rsv=0x40))
        closes.append(await read_frame(reader))
        await reader.read()

    async def main():
        async with Peer(script) as peer:  # a 101 without Sec-WebSocket-Extensions
            ws = await connect(peer.url, {}, 2, deflate=True)
            assert ws.deflate is None
            ws.send_text(b'{"a":1}')
            with pytest.raises(FrameError, match="reserved bits"):
                await ws.recv()
            await peer.done
    run(main)
    assert frames == [(0x81, b'{"a":1}')]
    assert closes == [(0x8, (1002).to_bytes(2, "big"))]


@pytest.mark.parametrize(("extra", "match"), [
    (b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=99\r\n", "not 8..15"),
    (b"Sec-WebSocket-Extensions: permessage-deflate; bogus\r\n", "unknown"),
    (b"Sec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
     "2 extensions"),
    (b"Sec-WebSocket-Extensions: x-other\r\n", "not offered"),
])
def test_an_answer_to_the_offer_that_breaks_rfc_7692_is_a_connect_error(extra, match):
    async def main():
        async with Peer(dribble(), answer=deflating(extra)) as peer:
            with pytest.raises(UpstreamConnectError, match=match):
                await connect(peer.url, {}, 1, deflate=True)
    run(main)


def test_server_parameters_are_followed():
    received = []

    async def script(reader, writer):
        for _ in range(2):
            _, data = await read_frame_bits(reader)
            received.append(zlib.decompressobj(-9).decompress(data + b"\x00\x00\xff\xff"))  # a fresh 9-bit inflater
        for _ in range(2):  # no context kept on the server's side either: each message a fresh stream
            writer.write(frame(compressed(TURN), rsv=0x40))
        await reader.read()

    async def main():
        extra = (b"Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; "
                 b"server_no_context_takeover; client_max_window_bits=9\r\n")
        async with Peer(script, answer=deflating(extra)) as peer:
            ws = await connect(peer.url, {}, 2, deflate=True)
            ws.send_text(TURN)
            ws.send_text(TURN)
            got = [await ws.recv(), await ws.recv()]
            ws.close()
            await peer.done
            return got
    assert run(main) == [TURN, TURN]
    assert received == [TURN, TURN]


def test_a_fragmented_compressed_message_with_a_ping_between_fragments():
    pongs = []
    data = compressed(TURN)
    a, b = len(data) // 3, 2 * len(data) // 3

    async def script(reader, writer):
        writer.write(frame(data[:a], fin=False, rsv=0x40) + frame(b"hi", opcode=0x9))
        await writer.drain()
        pongs.append(await read_frame(reader))
        writer.write(frame(data[a:b], opcode=0x0, fin=False) + frame(data[b:], opcode=0x0) + frame(b"after"))
        await reader.read()

    async def main():
        async with Peer(script, answer=deflating()) as peer:
            ws = await connect(peer.url, {}, 2, deflate=True)
            got = [await ws.recv(), await ws.recv()]
            ws.close()
            return got
    assert run(main) == [TURN, b"after"]
    assert pongs == [(0xA, b"hi")]


def two_halves() -> bytes:
    """One compressed message in two fragments of 60,000 inflated bytes each: each alone fits the limit."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = compressor.compress(b"\0" * 60_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    second = (compressor.compress(b"\0" * 60_000) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    return frame(first, fin=False, rsv=0x40) + frame(second, opcode=0x0)


@pytest.mark.parametrize("wire", [
    frame(compressed(b"\0" * 5_000_000), rsv=0x40),  # ~5 KB on the wire
    two_halves(),                                     # fragments adding up past it
], ids=["whole", "fragments"])
def test_a_zip_bomb_fails_the_socket_with_1009_on_the_inflated_size(wire):
    closes = failed_by(wire, "exceeds 100000 bytes inflated", deflating(), max_size=100_000, deflate=True)
    assert closes == [(0x8, (1009).to_bytes(2, "big"))]


@pytest.mark.parametrize(("wire", "code"), [
    (frame(b"a", fin=False, rsv=0x40) + frame(b"b", opcode=0x0, rsv=0x40), 1002),  # RSV1 on a continuation
    (frame(b"p", opcode=0x9, rsv=0x40), 1002),                                   # on a control frame
    (frame(b"x", rsv=0x20), 1002),                                               # RSV2: nothing negotiated it
    (frame(b"\xff\xff\xff\xff not deflate", rsv=0x40), 1007),                    # corrupt
], ids=["continuation", "ping", "rsv2", "corrupt"])
def test_misused_compression_fails_the_socket(wire, code):
    closes = failed_by(wire, "reserved bits set that no negotiated extension allows|corrupt compressed message",
                       deflating(), deflate=True)
    assert closes == [(0x8, code.to_bytes(2, "big"))]
