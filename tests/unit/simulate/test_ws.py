"""Responses WebSocket mode of the simulator: function calls, continuation with the tool's
output, OpenAI's 400s as error events, warm-up responses with every required field, and the
shorter first-token time of a continued turn."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import ResponseStreamEvent
from websockets.sync.client import connect

from proxy.simulate import TOOL_MARKER, get_profile, output_text, serve_in_thread
from proxy.simulate import ws as ws_module
from proxy.simulate.server import RunningSimulator
from tests.unit.simulate.spec import conforms, strict

pytestmark = pytest.mark.timeout(30)

TOOLS = [{"type": "namespace", "name": "shells", "description": "x", "tools": [
    {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {
        "command": {"type": "array", "items": {"type": "string"}}}, "required": ["command"]}}]}]


def turn(ws: Any, **create: Any) -> list[Any]:
    ws.send(json.dumps({"type": "response.create", "model": "r", **create}))
    events = []
    while True:
        data = json.loads(ws.recv(timeout=10))
        if data["type"] == "error":
            return [data]
        conforms("ResponseStreamEvent", data)
        events.append(strict(ResponseStreamEvent, data))
        if data["type"] in ("response.completed", "response.incomplete"):
            return events


def test_function_call_then_output_over_one_socket(fresh: RunningSimulator) -> None:
    with connect(fresh.base_url.replace("http", "ws") + "/responses") as ws:
        first = turn(ws, input=f"go {TOOL_MARKER}=shell", tools=TOOLS, store=False)
        assert [e.sequence_number for e in first] == list(range(len(first)))
        call = first[-1].response.output[0]
        assert (call.type, call.name, call.namespace, json.loads(call.arguments)) == (
            "function_call", "shell", "shells", {"command": ["echo", "hi"]})
        assert first[-1].response.tools[0].type == "namespace"
        second = turn(ws, previous_response_id=first[-1].response.id, tools=TOOLS, store=False,
                      input=[{"type": "function_call_output", "call_id": call.call_id, "output": "hi\n"}])
        assert second[-1].response.output_text == output_text(16)
        warm = turn(ws, generate=False, instructions="be brief", tools=TOOLS, input=[])
        done = warm[-1].response
        assert done.usage.input_tokens_details.cache_write_tokens == 0 and done.instructions == "be brief"
        assert done.parallel_tool_calls is True and done.temperature == 1.0 and done.top_p == 1.0


def test_invalid_create_is_an_error_event_with_param(fresh: RunningSimulator) -> None:
    with connect(fresh.base_url.replace("http", "ws") + "/responses") as ws:
        error = turn(ws, input="x", temperature="hot")[0]
        assert error["status"] == 400 and error["error"]["param"] == "temperature"
        assert error["error"]["code"] == "invalid_type"
        assert turn(ws, input="x", max_output_tokens=2)[-1].response.output_text == output_text(2)


def test_a_continued_turn_waits_only_the_configured_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's gain from WebSocket mode: naming the connection's last response spares the
    configured shares of the per-request overhead and the TTFT; a full-context turn on the same
    socket, or a continuation the socket does not hold, is spared nothing."""
    waits: list[float] = []

    async def pause(self: object, seconds: float) -> bool:
        waits.append(round(seconds, 9))
        return True

    monkeypatch.setattr(ws_module._Client, "pause", pause)
    profile = get_profile("instant", ttft_ms=200, request_overhead_ms=100, continued_overhead_share=0.2,
                          continued_ttft_share=0.5)
    with serve_in_thread(profile) as sim, connect(sim.base_url.replace("http", "ws") + "/responses") as ws:
        first = turn(ws, input="hello", store=False)[-1].response.id
        turn(ws, input="again", previous_response_id=first, store=False)
        turn(ws, input="from scratch", store=False)
        with connect(sim.base_url.replace("http", "ws") + "/responses") as other:
            assert turn(other, input="x", previous_response_id=first)[0]["error"]["code"] == "previous_response_not_found"
    assert waits == [0.3, 0.12, 0.3]  # 100 + 200 ms; 20 + 100 ms; 100 + 200 ms
