"""A client socket's conversation history: how previous_response_id expands into a full request."""
from __future__ import annotations

import orjson
import pytest

from proxy.api.errors import ProxyError
from proxy.api.responses_ws import _HISTORY, SseFrames, WebSocketStats, _Connection, _Context
from proxy.routing.hints import NO_HINTS


def connection() -> _Connection:
    """Only the history is exercised: the transport parts are never touched."""
    return _Connection(None, WebSocketStats(), None, NO_HINTS, None, None, batched=False)


def test_a_continuation_carries_the_whole_conversation_and_only_the_body_fields():
    conn = connection()
    past = [{"type": "message", "role": "user", "content": "hi"}, {"type": "message", "role": "assistant", "content": "yo"}]
    conn._remember("resp_1", _Context(past, len(orjson.dumps(past))))
    event = {"type": "response.create", "model": "codex", "input": "and then?", "previous_response_id": "resp_1",
             "stream_id": "s1", "generate": True, "client_metadata": {"x": 1}, "stream": False}
    body, context, delta, prior = conn._expand(event)
    assert delta == [{"type": "message", "role": "user", "content": "and then?"}]
    assert body == {"model": "codex", "input": past + delta, "stream": True}  # socket fields stay on the socket
    assert context.items == past + delta and prior == len(orjson.dumps(past))
    assert context.size == prior + len(orjson.dumps(delta))


def test_an_unknown_previous_response_is_a_400_naming_the_field():
    with pytest.raises(ProxyError) as refused:
        connection()._expand({"type": "response.create", "model": "codex", "input": [], "previous_response_id": "resp_x"})
    assert (refused.value.status, refused.value.code, refused.value.param) == (
        400, "previous_response_not_found", "previous_response_id")


def test_history_keeps_only_the_last_responses():
    conn = connection()
    for i in range(_HISTORY + 1):
        conn._remember(f"resp_{i}", _Context([], 0))
    assert "resp_0" not in conn.history and f"resp_{_HISTORY}" in conn.history and len(conn.history) == _HISTORY


def test_sse_frames_split_events_across_chunk_boundaries():
    frames = SseFrames()
    assert frames.feed(b'event: response.created\ndata: {"type":"response.cr') == []
    assert frames.feed(b'eated"}\n\nevent: x\ndata: {"type":"x"}\n\n') == [b'{"type":"response.created"}', b'{"type":"x"}']
