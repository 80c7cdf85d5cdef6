"""Capability-aware routing: context windows, input modalities, reasoning effort."""
from __future__ import annotations

import orjson
import pytest

from proxy.call import ModelRequest
from proxy.config import parse_policy
from proxy.errors import InvalidRequest
from proxy.routing.capability import media_of
from proxy.routing.hints import NO_HINTS
from proxy.routing.live import RoutingState
from proxy.routing.strategies import order_candidates
from tests.unit.routing.test_strategies import POLICY

FAST = "    hardware: wafer\n    context_window: 131072\n    modalities: [text]\n"
DEEP = "    hardware: gpu\n    context_window: 1000000\n    modalities: [text, image]\n    reasoning: true\n"


def policy(fast: str = FAST, deep: str = DEEP):
    text = POLICY.format(strategy="latency", extra="")
    return parse_policy(text.replace("    hardware: wafer\n", fast).replace("    hardware: gpu\n", deep))


def request(content, max_tokens: int = 1000, endpoint: str = "chat", **extra) -> ModelRequest:
    key = "messages" if endpoint == "chat" else "input"
    body = {"model": "r", key: [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}
    return ModelRequest.from_body(endpoint, orjson.dumps(body), body, "req")


def order(pol, req):
    deps, reason, _ = order_candidates(pol.routes["r"], pol.deployments, req, NO_HINTS, RoutingState(), 0.0)
    return [d.name for d in deps], reason


IMAGE = [{"type": "text", "text": "what is wrong here"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]


def test_a_prompt_beyond_the_fast_lanes_window_skips_it():
    assert order(policy(), request("x" * 4000)) == (["wafer", "gpu"], "latency")
    assert order(policy(), request("x" * 600_000)) == (["gpu"], "latency;capability:wafer=context")
    # The request's own max output counts: a 120K prompt asking for 20K more does not fit in 128K.
    assert order(policy(), request("x" * 480_000, max_tokens=20_000))[1] == "latency;capability:wafer=context"


@pytest.mark.parametrize("endpoint, part", [
    ("chat", {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}),
    ("chat", {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
    ("responses", {"type": "input_image", "image_url": "https://example.com/a.png"}),
], ids=["chat-image", "chat-audio", "responses-image"])
def test_media_the_fast_lane_cannot_take_skips_it(endpoint, part):
    req = request([{"type": "text", "text": "look"}, part], endpoint=endpoint)
    kind = "audio" if "audio" in part["type"] else "image"
    assert media_of(req) == {kind}
    if kind == "image":
        assert order(policy(), req) == (["gpu"], "latency;capability:wafer=image")
    else:
        with pytest.raises(InvalidRequest) as info:
            order(policy(), req)
        assert "wafer does not take audio input" in info.value.message


def test_text_that_mentions_images_is_text():
    assert media_of(request('the JSON {"type": "image_url"} is the OpenAI image part')) == frozenset()


def test_no_capable_candidate_is_a_400_naming_why():
    small = policy(FAST.replace("131072", "1000"), DEEP.replace("1000000", "2000"))
    with pytest.raises(InvalidRequest) as info:
        order(small, request("x" * 40_000))
    error = info.value
    assert error.code == "unsupported_request"
    assert "wafer takes 1000 tokens" in error.message and "gpu takes 2000 tokens" in error.message


def test_reasoning_effort_high_goes_to_the_deep_lane():
    assert order(policy(), request("think", reasoning_effort="high")) == (["gpu", "wafer"], "latency;hint:reasoning=high")
    assert order(policy(), request("think", endpoint="responses", reasoning={"effort": "high"}))[0][0] == "gpu"
    assert order(policy(), request("think", reasoning_effort="low"))[0][0] == "wafer"


def test_undeclared_capabilities_are_not_checked():
    plain = parse_policy(POLICY.format(strategy="latency", extra=""))
    assert order(plain, request(IMAGE)) == (["wafer", "gpu"], "latency")
