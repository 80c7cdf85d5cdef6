"""proxy.upstream.body: the client's bytes go upstream untouched but for ``model`` (and usage reporting)."""
from __future__ import annotations

import orjson
import pytest

from proxy.upstream.body import needs_usage_injection, rewrite_body, wants_continuous_usage

MESSAGES = [{"role": "user", "content": "hi"}]


def rewrite(raw: bytes, model: str = "sim-spark", **options: bool) -> bytes:
    return rewrite_body(raw, orjson.loads(raw), model, options.get("inject", False), options.get("continuous", False))


def test_only_the_model_value_changes_byte_for_byte():
    raw = b'{ "messages" : [{"role":"user","content":"caf\\u00e9 \\"model\\": x"}],\n  "model" :  "codex", "n":1 }'
    assert rewrite(raw) == raw.replace(b'"model" :  "codex"', b'"model":"sim-spark"')
    assert rewrite(raw, model="codex") is raw  # nothing to change: the very same bytes


def test_an_escaped_model_value_is_replaced_whole():
    raw = b'{"model":"co\\"de\\\\x","messages":[]}'
    assert orjson.loads(rewrite(raw)) == {"model": "sim-spark", "messages": []}


@pytest.mark.parametrize("raw", [
    b'{"model":"codex","metadata":{"model":"other"}}',  # nested key
    b'{"mod\\u0065l":"codex","metadata":{"model":"gpt-pricier"}}',  # escaped top-level key, one literal match
    b'{"mod\\u0065l":"codex","metadata":{"model":"codex"}}',  # ...even with the same value
    b'{"\\u006Dodel":"codex","x\\"model":"gpt-pricier"}',  # a key that merely ends in "model"
])
def test_the_top_level_model_is_the_one_replaced_however_the_body_is_spelled(raw):
    body = orjson.loads(raw)
    sent = orjson.loads(rewrite(raw))
    assert sent == {**body, "model": "sim-spark"}


def test_usage_reporting_is_switched_on_for_streams_that_did_not_ask():
    raw = b'{"model":"codex","messages":[],"stream":true}'
    assert rewrite(raw, inject=True) == b'{"stream_options":{"include_usage":true},"model":"sim-spark","messages":[],"stream":true}'
    assert orjson.loads(rewrite(raw, continuous=True))["stream_options"] == {"include_usage": True,
                                                                             "continuous_usage_stats": True}


def test_existing_stream_options_are_merged_not_duplicated():
    raw = b'{"model":"codex","stream":true,"stream_options":{"include_obfuscation":false}}'
    sent = rewrite(raw, inject=True)
    assert sent.count(b"stream_options") == 1
    assert orjson.loads(sent)["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_without_client_bytes_the_body_is_encoded():
    body = {"model": "codex", "input": "hi"}
    assert orjson.loads(rewrite_body(None, body, "sim-codex", False)) == {"model": "sim-codex", "input": "hi"}
    assert body["model"] == "codex"  # the parsed body is read-only


@pytest.mark.parametrize("endpoint, stream, wants, injected, continuous", [
    ("chat", True, False, True, True),
    ("chat", True, True, False, True),
    ("chat", False, False, False, False),
    ("completions", True, False, True, True),
    ("responses", True, False, False, False),  # usage always arrives in response.completed
    ("embeddings", False, False, False, False),
])
def test_which_requests_get_usage_reporting(endpoint, stream, wants, injected, continuous):
    assert needs_usage_injection(endpoint, stream, wants) is injected
    assert wants_continuous_usage(endpoint, stream) is continuous
