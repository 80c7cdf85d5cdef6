"""proxy/simulate/asgi.py: path normalisation and the key a request carries, as real providers read them."""
from __future__ import annotations

import pytest

from proxy.simulate.asgi import bearer_key, norm_path


@pytest.mark.parametrize("path, normal", [
    ("/v1/chat/completions", "chat/completions"), ("/chat/completions", "chat/completions"),
    ("/v1/v1/chat/completions/", "chat/completions"), ("/v1", ""), ("/", ""), ("/v1x/models", "v1x/models"),
    ("/v1/responses/resp_1/input_items", "responses/resp_1/input_items"),
])
def test_base_urls_with_or_without_v1_reach_the_same_endpoint(path, normal) -> None:
    assert norm_path(path) == normal


@pytest.mark.parametrize("headers, key", [
    ([(b"authorization", b"Bearer sk-1")], b"sk-1"),
    ([(b"authorization", b"bearer   sk-2  ")], b"sk-2"),
    ([(b"x-api-key", b"ant-3")], b"ant-3"),           # Anthropic's header
    ([(b"authorization", b"Basic dXNlcg==")], None),  # not a bearer token
    ([(b"authorization", b"Bearer")], None),
    ([], None),
])
def test_the_key_is_read_from_a_bearer_token_or_anthropics_header(headers, key) -> None:
    assert bearer_key(headers) == key
