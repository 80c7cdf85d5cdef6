"""proxy.upstream.scan: usage and the first token found in relayed bytes, without parsing every chunk."""
from __future__ import annotations

import orjson
import pytest

from proxy.call import Usage
from proxy.upstream.scan import StreamScanner, UsageChunkFilter, event_type, extract_usage, response_id


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)


def chunk(text: str | None = None, role: str | None = None) -> dict:
    delta = {k: v for k, v in (("role", role), ("content", text)) if v is not None}
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}], "usage": None}


USAGE_CHUNK = {"id": "c", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14,
                                                   "prompt_tokens_details": {"cached_tokens": 4},
                                                   "completion_tokens_details": {"reasoning_tokens": 2}}}


def test_chat_and_responses_usage_in_one_vocabulary():
    assert extract_usage(orjson.dumps(USAGE_CHUNK)) == Usage(11, 3, 4, 2)
    responses = {"type": "response.completed", "response": {"usage": {
        "input_tokens": 20, "input_tokens_details": {"cached_tokens": 5}, "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 27}}}
    assert extract_usage(b"event: response.completed\ndata: " + orjson.dumps(responses)) == Usage(20, 7, 5, 1)
    assert extract_usage(b'{"usage": {"prompt_tokens": 8, "total_tokens": 8}}') == Usage(8, 0)  # embeddings


def test_the_last_usage_wins_and_nulls_are_skipped():
    stream = sse({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}, chunk("a"), USAGE_CHUNK, chunk("b"))
    assert extract_usage(stream) == Usage(11, 3, 4, 2)
    assert extract_usage(sse(chunk("a"), chunk("b"))) is None


@pytest.mark.parametrize("buf", [
    b'{"usage": {"prompt_tokens": 5, "completion_tokens": ',  # cut off
    b'{"usage": {"prompt_tokens": "many"}}',  # not a number
    b'{"usage": {"prompt_tokens": [1]}}',
    b'{"usage": 5}',
])
def test_broken_usage_is_no_usage(buf):
    assert extract_usage(buf) is None


def test_usage_object_ends_at_its_own_brace_whatever_nests_inside_or_follows():
    """The brace matcher jumps between braces: nesting before a close, and objects after it, must not fool it."""
    nested = b'{"usage": {"prompt_tokens_details": {"cached_tokens": 4, "x": {"y": {}}}, "prompt_tokens": 9}, "z": {"w": 1}}'
    assert extract_usage(nested) == Usage(9, 0, 4)
    assert extract_usage(b'{"usage": {"prompt_tokens_details": {"cached_tokens": 4}, "prompt_tokens": 9') is None
    assert extract_usage(b'{"usage": {"prompt_tokens": 3}') == Usage(3, 0)  # its own close suffices


def test_usage_quoted_in_generated_text_is_not_usage():
    text = '"usage": {"prompt_tokens": 999999, "completion_tokens": 999999}'
    assert extract_usage(sse(chunk(text))) is None


def test_negative_counts_are_not_credit():
    assert extract_usage(b'{"usage":{"prompt_tokens":-1000,"completion_tokens":-5}}') == Usage(0, 0)


def test_scanner_times_the_first_real_token_not_the_role_chunk():
    scanner = StreamScanner(started=0.0)
    scanner.feed(sse(chunk(role="assistant")))
    assert scanner.first_token_at is None
    scanner.feed(sse(chunk("")))  # an empty delta is not output
    assert scanner.first_token_at is None
    scanner.feed(sse(chunk("hi")))
    assert scanner.first_token_at is not None and scanner.deltas == 1


@pytest.mark.parametrize("event", [
    {"choices": [{"delta": {"reasoning_content": "thinking"}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]},
    {"type": "response.output_text.delta", "delta": "x"},
])
def test_reasoning_tool_calls_and_responses_deltas_count_as_first_token(event):
    scanner = StreamScanner(started=0.0)
    scanner.feed(sse(event))
    assert scanner.first_token_at is not None


def test_usage_split_across_chunks_and_after_a_long_stream_is_found():
    scanner = StreamScanner(started=0.0)
    for i in range(3000):  # ~300 KB of output: only a bounded tail is kept
        scanner.feed(sse(chunk(f"token{i} ")))
    tail = sse(USAGE_CHUNK) + b"data: [DONE]\n\n"
    for i in range(0, len(tail), 7):
        scanner.feed(tail[i:i + 7])
    assert sum(len(part) for part in scanner._tail) < 40_000
    assert scanner.usage_or_estimate(input_estimate=100) == Usage(11, 3, 4, 2)


def test_without_usage_the_estimate_counts_deltas_and_says_so():
    scanner = StreamScanner(started=0.0)
    scanner.feed(sse(chunk(role="assistant"), chunk("a"), chunk("b")) + sse(chunk("c")))
    assert scanner.usage_or_estimate(input_estimate=42) == Usage(42, 3, reported=False)


def test_filter_drops_only_the_usage_chunk_the_client_did_not_ask_for():
    stream = sse(chunk(role="assistant"), chunk("a"), chunk("b"), USAGE_CHUNK) + b"data: [DONE]\n\n"
    expected = sse(chunk(role="assistant"), chunk("a"), chunk("b")) + b"data: [DONE]\n\n"
    for size in (1, 5, 64, len(stream)):  # however the upstream cut its chunks
        usage_filter = UsageChunkFilter()
        out = b"".join(usage_filter.feed(stream[i:i + size]) for i in range(0, len(stream), size))
        assert out + usage_filter.flush() == expected


def test_filter_keeps_text_that_merely_mentions_empty_choices():
    stream = sse(chunk('"choices": []'))
    usage_filter = UsageChunkFilter()
    assert usage_filter.feed(stream) + usage_filter.flush() == stream


def test_event_type_and_response_id_are_found_without_parsing():
    created = b'{"type":"response.created","sequence_number":0,"response":{"id":"resp_42","object":"response"}}'
    assert event_type(created) == b"response.created" and event_type(b'{"x":1}') == b""
    assert response_id(created) == "resp_42"
    assert response_id(b'{"id":"resp_7","object":"response","output":[{"id":"msg_1"}]}') == "resp_7"
    assert response_id(b"data: [DONE]") is None
