"""proxy.upstream.ws_deflate: the provider's answer to the permessage-deflate offer, checked as
RFC 7692 says; messages compressed with (and without) context takeover; a bomb or corrupt data
from the provider stopped without inflating more than the limit."""
from __future__ import annotations

import base64
import itertools
import os
import random
import tracemalloc
import zlib

import pytest

from proxy.upstream.ws_deflate import Deflate, InflateError, accept

# 20 KB that compresses little on its own (base64 of random bytes): what a resent turn saves is context
TURN = b'{"type":"response.create","instructions":"' + base64.b64encode(random.Random(7).randbytes(15_000)) + b'"}'


def server_deflate(payload: bytes, compressor=None) -> bytes:
    """What a provider sends: raw deflate, sync-flushed, the 00 00 ff ff tail stripped."""
    compressor = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def server_inflate(data: bytes, inflater=None) -> bytes:
    inflater = inflater or zlib.decompressobj(-15)
    return inflater.decompress(data + b"\x00\x00\xff\xff")


@pytest.mark.parametrize(("answer", "server_reset", "client_reset", "client_bits"), [
    ("permessage-deflate", False, False, 15),
    ("permessage-deflate; server_no_context_takeover", True, False, 15),
    ("PerMessage-Deflate; client_no_context_takeover; server_no_context_takeover", True, True, 15),
    ("permessage-deflate; client_max_window_bits=10; server_max_window_bits=9", False, False, 10),
    ('permessage-deflate; client_max_window_bits="12"', False, False, 12),
    ("permessage-deflate;server_max_window_bits=15", False, False, 15),
])
def test_every_answer_rfc_7692_allows_is_accepted_with_its_parameters(answer, server_reset, client_reset, client_bits):
    deflate = accept(answer)
    assert (deflate._server_reset, deflate._client_reset, deflate._client_bits) == (server_reset, client_reset, client_bits)


@pytest.mark.parametrize(("answer", "why"), [
    ("x-webkit-deflate-frame", "not offered"),
    ("permessage-deflate, permessage-deflate", "2 extensions"),
    ("permessage-deflate; client_max_window_bits", "not 8..15"),  # the answer must give a value
    ("permessage-deflate; client_max_window_bits=16", "not 8..15"),
    ("permessage-deflate; server_max_window_bits=7", "not 8..15"),
    ("permessage-deflate; server_max_window_bits=1e1", "not 8..15"),
    ("permessage-deflate; server_no_context_takeover=1", "takes no value"),
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", "twice"),
    ("permessage-deflate; mystery", "unknown"),
])
def test_an_answer_a_client_must_refuse_is_refused(answer, why):
    with pytest.raises(ValueError, match=why):
        accept(answer)


def test_context_takeover_makes_a_resent_turn_nearly_free_and_the_server_reads_both():
    deflate, inflater = Deflate(), zlib.decompressobj(-15)
    first, second = deflate.deflate(TURN), deflate.deflate(TURN)
    assert len(second) < len(first) / 20
    assert server_inflate(first, inflater) == TURN and server_inflate(second, inflater) == TURN


def test_client_no_context_takeover_compresses_each_message_on_its_own():
    deflate = Deflate(client_no_context_takeover=True)
    first, second = deflate.deflate(TURN), deflate.deflate(TURN)
    assert first == second  # nothing carried over: the server may reset its inflater
    assert server_inflate(second) == TURN


def test_a_small_window_is_honoured_and_an_8_bit_window_means_plain_messages():
    data = Deflate(client_max_window_bits=9).deflate(TURN)
    assert zlib.decompressobj(-9).decompress(data + b"\x00\x00\xff\xff") == TURN  # a 512-byte window inflates it
    assert Deflate(client_max_window_bits=8).deflate(TURN) is None  # zlib cannot write an 8-bit window


def test_inflate_follows_the_servers_context_and_resets_when_it_does_not_keep_one():
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    taken_over = Deflate()
    for _ in range(3):
        assert taken_over.inflate(server_deflate(TURN, compressor), True, len(TURN)) == TURN
    reset = Deflate(server_no_context_takeover=True)
    for _ in range(3):
        assert reset.inflate(server_deflate(TURN), True, len(TURN)) == TURN  # a fresh stream each message


def test_a_message_split_anywhere_inflates_piece_by_piece():
    data = server_deflate(TURN)
    deflate, cut = Deflate(), [0, 1, 7, len(data) // 2, len(data) - 1, len(data)]
    out = b"".join(deflate.inflate(data[a:b], b == len(data), len(TURN)) for a, b in itertools.pairwise(cut))
    assert out == TURN


def test_a_bomb_stops_one_byte_past_the_limit_without_inflating_the_rest():
    bomb = server_deflate(b"\0" * 50_000_000)  # ~50 KB on the wire, 50 MB inflated
    tracemalloc.start()
    try:
        with pytest.raises(InflateError) as caught:
            Deflate().inflate(bomb, True, 1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.code == 1009
    assert peak < 5_000_000


def test_a_message_exactly_at_the_limit_passes():
    payload = os.urandom(1000)
    assert Deflate().inflate(server_deflate(payload), True, 1000) == payload
    with pytest.raises(InflateError):
        Deflate().inflate(server_deflate(payload), True, 999)


def test_corrupt_data_is_1007_not_a_crash():
    with pytest.raises(InflateError) as caught:
        Deflate().inflate(b"\xff\xff\xff\xff garbage", True, 1000)
    assert caught.value.code == 1007
