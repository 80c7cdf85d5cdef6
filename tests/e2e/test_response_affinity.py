"""Stored responses stay with the deployment that made them: continuations and retrieve/delete go there."""
from __future__ import annotations

import httpx
import openai
import pytest

from tests.support import proxy_from_yaml, simulator

POLICY = """\
version: 1
auth: open
deployments:
  - {{name: wafer, provider: cerebras, model: sim-wafer, base_url: "{wafer}/v1", hardware: wafer}}
  - {{name: gpu, provider: openai, model: sim-gpu, base_url: "{gpu}/v1", hardware: gpu}}
routes:
  - {{name: codex, candidates: [wafer, gpu]}}
"""


@pytest.fixture
def lanes():
    with simulator("wafer", ttft_ms=1, tokens_per_s=4000) as wafer, simulator("gpu", ttft_ms=1, tokens_per_s=4000) as gpu:
        yield wafer, gpu


@pytest.fixture
def proxy(tmp_path, lanes):
    wafer, gpu = lanes
    with proxy_from_yaml(tmp_path, POLICY.format(wafer=wafer.url, gpu=gpu.url)) as server:
        yield server


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def fault(sim, mode: str, count: int = 1) -> None:
    httpx.post(sim.url + "/sim/faults", json={"mode": mode, "count": count}).raise_for_status()


@pytest.mark.parametrize("stream", [False, True])
def test_a_continuation_goes_to_the_deployment_that_holds_the_response(proxy, lanes, stream):
    wafer, gpu = lanes
    fault(wafer, "503")  # the first turn falls back to the GPU lane, which then holds the response
    first = sdk(proxy).responses.with_raw_response.create(model="codex", input="hi", max_output_tokens=2)
    assert first.headers["x-laneway-deployment"] == "gpu"
    previous = first.parse().id
    body = {"model": "codex", "input": "more", "max_output_tokens": 2, "previous_response_id": previous, "stream": stream}
    second = httpx.post(proxy.url + "/v1/responses", json=body)
    assert second.headers["x-laneway-deployment"] == "gpu"  # the wafer lane is healthy again and primary
    assert second.headers["x-laneway-route-reason"] == "affinity:gpu"
    plain = sdk(proxy).responses.with_raw_response.create(model="codex", input="new", max_output_tokens=2)
    assert plain.headers["x-laneway-deployment"] == "wafer"  # without previous_response_id, the policy decides


def test_when_the_holder_is_down_the_client_is_told_so(proxy, lanes):
    wafer, gpu = lanes
    fault(wafer, "503")
    previous = sdk(proxy).responses.create(model="codex", input="hi", max_output_tokens=2).id
    gpu.server.should_exit = True
    gpu.thread.join(timeout=5)
    refused = httpx.post(proxy.url + "/v1/responses", json={"model": "codex", "input": "more", "previous_response_id": previous})
    error = refused.json()["error"]
    assert refused.status_code == 502 and error["code"] == "upstream_unavailable"
    assert "holds previous_response_id (gpu)" in error["message"] and "without previous_response_id" in error["message"]


def test_an_unknown_response_is_404_in_openai_shape(proxy):
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(proxy).responses.retrieve("resp_nothing_here")
    assert missing.value.body["code"] == "response_not_found"
    assert httpx.put(proxy.url + "/v1/responses/resp_x").status_code == 405
    assert httpx.get(proxy.url + "/v1/responses/resp_x/bogus").status_code == 404


def test_retrieve_input_items_and_delete_reach_the_holder(proxy, lanes):
    wafer, gpu = lanes
    fault(wafer, "503")
    client = sdk(proxy)
    created = client.responses.create(model="codex", input="remember me", max_output_tokens=2)
    fetched = client.responses.with_raw_response.retrieve(created.id)
    assert fetched.headers["x-laneway-deployment"] == "gpu" and fetched.parse().id == created.id
    items = client.responses.input_items.list(created.id)
    assert [item.content[0].text for item in items.data] == ["remember me"]
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):  # the provider's own answer, relayed
        client.responses.retrieve(created.id)
