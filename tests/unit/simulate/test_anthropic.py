"""The simulated provider's Anthropic Messages API: text that ends its turn, and tool_use blocks
(whole and streamed as input_json_delta), shaped as Anthropic documents them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from proxy.simulate import TOOL_MARKER
from proxy.simulate.server import RunningSimulator

pytestmark = pytest.mark.timeout(30)

SHELL = {"name": "shell", "description": "Run a command", "input_schema": {
    "type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}, "required": ["command"]}}
ASK = [{"role": "user", "content": f"list the files {TOOL_MARKER}"}]


def messages(sim: RunningSimulator, **body: Any) -> httpx.Response:
    return httpx.post(sim.base_url + "/messages", json={"model": "claude-sim", "max_tokens": 1000, **body})


def events(raw: str) -> list[tuple[str, dict]]:
    out = []
    for block in raw.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_text_ends_its_turn_below_max_tokens_and_stops_at_it(fresh):
    free = messages(fresh, messages=[{"role": "user", "content": "hi"}]).json()
    assert free["stop_reason"] == "end_turn" and free["usage"]["output_tokens"] == 16
    cut = messages(fresh, messages=[{"role": "user", "content": "hi"}], max_tokens=3).json()
    assert cut["stop_reason"] == "max_tokens" and cut["content"] == [{"type": "text", "text": "tok1 tok2 tok3 "}]


def test_tool_use_whole(fresh):
    body = messages(fresh, messages=ASK, tools=[SHELL]).json()
    [block] = body["content"]
    assert body["stop_reason"] == "tool_use" and body["type"] == "message" and body["role"] == "assistant"
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_") and block["name"] == "shell"
    assert block["input"] == {"command": ["echo", "hi"]}


def test_tool_use_streamed(fresh):
    raw = messages(fresh, messages=ASK, tools=[SHELL], stream=True).text
    stream = events(raw)
    names = [name for name, _ in stream]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = stream[1][1]["content_block"]
    assert start["type"] == "tool_use" and start["name"] == "shell" and start["input"] == {}
    deltas = [data["delta"] for name, data in stream if name == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"input_json_delta"}
    assert json.loads("".join(d["partial_json"] for d in deltas)) == {"command": ["echo", "hi"]}
    assert stream[-2][1]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(("choice", "calls"), [
    ({"type": "auto"}, True), ({"type": "none"}, False), ({"type": "any"}, True), ({"type": "tool", "name": "shell"}, True)])
def test_tool_choice(fresh, choice, calls):
    body = messages(fresh, messages=ASK, tools=[SHELL], tool_choice=choice).json()
    assert (body["content"][0]["type"] == "tool_use") is calls


def test_forced_tool_without_marker_and_text_after_the_tool_result(fresh):
    plain = [{"role": "user", "content": "hello"}]
    assert messages(fresh, messages=plain, tools=[SHELL]).json()["content"][0]["type"] == "text"
    assert messages(fresh, messages=plain, tools=[SHELL], tool_choice={"type": "any"}).json()["stop_reason"] == "tool_use"
    call = messages(fresh, messages=ASK, tools=[SHELL]).json()["content"][0]
    follow = ASK + [{"role": "assistant", "content": [call]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "hi"}]}]
    answer = messages(fresh, messages=follow, tools=[SHELL]).json()
    assert answer["stop_reason"] == "end_turn" and answer["content"][0]["type"] == "text"
