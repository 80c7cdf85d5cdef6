"""proxy/api/stored_responses.py: retrieve / delete / input_items / cancel reach the holder, and hostile
paths, methods, queries and keys are refused in OpenAI's shape before anything goes upstream."""
from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.support import proxy_from_yaml, simulator

KEY = "lw-stored-responses-key"
POLICY = """\
version: 1
auth: keys
keys:
  - {{name: dev, sha256: {sha}}}
deployments:
  - {{name: gpu, provider: openai, model: sim-gpu, base_url: "{gpu}/v1"}}
routes:
  - {{name: codex, candidates: [gpu]}}
"""
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def gpu():
    with simulator("gpu", ttft_ms=1, tokens_per_s=4000) as server:
        yield server


@pytest.fixture
def proxy(tmp_path, gpu):
    httpx.post(gpu.url + "/sim/reset").raise_for_status()
    text = POLICY.format(sha=hashlib.sha256(KEY.encode()).hexdigest(), gpu=gpu.url)
    with proxy_from_yaml(tmp_path, text) as server:
        yield server


def create(proxy, text: str = "remember me") -> str:
    made = httpx.post(proxy.url + "/v1/responses", headers=AUTH,
                      json={"model": "codex", "input": [{"role": "user", "content": text}, {"role": "user", "content": "and me"}],
                            "max_output_tokens": 2})
    assert made.status_code == 200, made.text
    return made.json()["id"]


def upstream_requests(gpu) -> int:
    return httpx.get(gpu.url + "/sim/stats").json()["requests"]


def test_each_operation_reaches_the_holder_with_its_query(proxy, gpu) -> None:
    rid = create(proxy)
    got = httpx.get(f"{proxy.url}/v1/responses/{rid}", headers=AUTH)
    assert got.status_code == 200 and got.json()["id"] == rid and got.headers["x-laneway-deployment"] == "gpu"
    assert got.headers["x-request-id"]
    page = httpx.get(f"{proxy.url}/v1/responses/{rid}/input_items?limit=1&order=asc", headers=AUTH)
    assert page.status_code == 200
    assert [item["content"][0]["text"] for item in page.json()["data"]] == ["remember me"]  # limit and order went upstream
    cancel = httpx.post(f"{proxy.url}/v1/responses/{rid}/cancel", headers=AUTH)
    assert cancel.status_code == 400 and "synchronous" in cancel.json()["error"]["message"]  # the provider's own answer
    deleted = httpx.delete(f"{proxy.url}/v1/responses/{rid}", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert httpx.get(f"{proxy.url}/v1/responses/{rid}", headers=AUTH).status_code == 404


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": KEY}])
def test_a_caller_without_a_valid_key_learns_nothing_about_the_response(proxy, gpu, headers) -> None:
    rid = create(proxy)
    before = upstream_requests(gpu)
    refused = httpx.get(f"{proxy.url}/v1/responses/{rid}", headers=headers)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert rid not in refused.text and upstream_requests(gpu) == before


@pytest.mark.parametrize("path, status, code", [
    ("/v1/responses/resp_x/bogus", 404, "not_found"),
    ("/v1/responses/resp_x/input_items/more", 404, "not_found"),
    ("/v1/responses/..%2f..%2fadmin", 404, "not_found"),
    ("/v1/responses/resp%00x", 404, "not_found"),
    ("/v1/responses/" + "r" * 201, 404, "not_found"),
    ("/v1/responses/resp_unknown", 404, "response_not_found"),
])
def test_paths_that_name_no_stored_response_are_404(proxy, gpu, path, status, code) -> None:
    before = upstream_requests(gpu)
    answer = httpx.get(proxy.url + path, headers=AUTH)
    assert answer.status_code == status and answer.json()["error"]["code"] == code
    assert len(answer.text) < 1000 and upstream_requests(gpu) == before


@pytest.mark.parametrize("method, tail", [("PUT", ""), ("POST", ""), ("DELETE", "/input_items"), ("GET", "/cancel"),
                                          ("PATCH", "/cancel")])
def test_a_method_the_operation_does_not_take_is_405(proxy, method, tail) -> None:
    rid = create(proxy)
    answer = httpx.request(method, f"{proxy.url}/v1/responses/{rid}{tail}", headers=AUTH)
    assert answer.status_code == 405 and answer.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("query", ["limit=1;DROP", "order=asc'", "after=(x)", "limit=1*2", "after=a,b"])
def test_a_query_with_characters_input_items_never_takes_is_400_not_forwarded(proxy, gpu, query) -> None:
    rid = create(proxy)
    before = upstream_requests(gpu)
    with httpx.Client() as client:
        request = client.build_request("GET", f"{proxy.url}/v1/responses/{rid}/input_items", headers=AUTH)
        request.url = request.url.copy_with(query=query.encode())
        answer = client.send(request)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_query"
    assert upstream_requests(gpu) == before


def test_the_holder_down_is_502_naming_it_not_a_500(tmp_path) -> None:
    with simulator("gpu", ttft_ms=1, tokens_per_s=4000) as own:
        text = POLICY.format(sha=hashlib.sha256(KEY.encode()).hexdigest(), gpu=own.url)
        with proxy_from_yaml(tmp_path, text) as proxy:
            rid = create(proxy)
            own.server.should_exit = True
            own.thread.join(timeout=5)
            answer = httpx.get(f"{proxy.url}/v1/responses/{rid}", headers=AUTH, timeout=10)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "upstream_unavailable" and "(gpu)" in error["message"] and rid in error["message"]
