"""Responses objects and events Laneway writes itself must read like OpenAI's."""
from __future__ import annotations

import orjson
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from proxy.api.responses_events import failure_events, next_sequence_number, response_object, sse, zero_usage


def test_objects_echo_the_request_with_the_providers_defaults():
    body = {"model": "codex", "instructions": "be brief", "tools": [], "temperature": 0.2}
    done = {**response_object(body, "resp_1", "completed"), "usage": zero_usage()}
    parsed = Response.model_validate(done)
    assert (parsed.instructions, parsed.temperature, parsed.top_p, parsed.tool_choice) == ("be brief", 0.2, 1.0, "auto")


def test_a_broken_stream_continues_the_numbering():
    chunks = [b'event: x\ndata: {"type":"x","sequence_number":7}\n\n', b"data: partial"]
    assert next_sequence_number(*chunks) == 8 and next_sequence_number(b"nothing") == 0
    error, failed = failure_events({"model": "codex"}, "resp_1", 8, "upstream_stream_error", "broke off")
    assert [TypeAdapter(ResponseStreamEvent).validate_python(e).sequence_number for e in (error, failed)] == [8, 9]
    frames = sse([error, failed]).split(b"\n\n")
    assert frames[0].startswith(b"event: error\ndata: ") and orjson.loads(frames[1].split(b"data: ")[1])["type"] == "response.failed"
