"""proxy.upstream.body: the client's bytes go upstream untouched but for ``model`` (and usage reporting)."""
from __future__ import annotations

import json
import random

import orjson
import pytest

from proxy.errors import InvalidRequest
from proxy.upstream.body import model_member, needs_usage_injection, rewrite_body, wants_continuous_usage

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


# --- the top-level member, however hostile the body --------------------------------------

def top_level_models(sent: bytes) -> list[object]:
    """Every top-level "model" value in ``sent``, duplicates included (json keeps them all)."""
    return [value for key, value in json.loads(sent, object_pairs_hook=lambda pairs: pairs) if key == "model"]


def assert_provider_reads_the_deployment(raw: bytes, sent: bytes, **changed: object) -> None:
    """What a provider reads of ``sent`` is the client's body (as the proxy parsed it) with the
    deployment's model named exactly once at the top level (and ``changed``, nothing else)."""
    assert top_level_models(sent) == ["sim-spark"]
    assert orjson.loads(sent) == {**orjson.loads(raw), "model": "sim-spark", **changed}


HOSTILE = [
    b'{"messages":[{"role":"user","content":"{\\"model\\": \\"gpt-pricier\\"}"}],"model":"codex"}',  # in a string
    b'{"messages":[{"role":"user","content":"model"}],"model":"codex","user":"model"}',  # "model" as values
    b'{"metadata":{"model":"gpt-pricier","x":{"model":"y"}},"model":"codex"}',  # nested before the top-level one
    b'{"model":"codex","tools":[{"type":"function","function":{"name":"model","parameters":{"model":1}}}]}',
    b'{"x\\"model":"gpt-pricier","model":"codex"}',  # a key ending in "model
    b'{"x\\\\":"model","model":"codex"}',  # an escaped backslash before a quote that does end the key
    b'{"mod\\u0065l":"codex"}',  # the top-level key spelled with escapes...
    b'{"\\u006d\\u006f\\u0064\\u0065\\u006c":"codex","metadata":{"model":"gpt-pricier"}}',  # ...and a plain nested one
    b'{"model":"gpt-pricier","messages":[],"model":"codex"}',  # duplicate top-level model: the last one counts
    b'{"model":"codex","messages":[],"mod\\u0065l":"codex"}',  # the same, spelled twice differently
    b'{"model":"codex","n":1,"n":2}',  # a duplicate other key: the walk cannot be trusted either
    b' \r\n\t{ \n"model"\t:\r"codex" ,\n"messages" : [ ] } \n',  # every whitespace JSON allows
    b'{"messages":' + b"[" * 600 + b"]" * 600 + b',"model":"codex"}',  # deeper than orjson re-encodes
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_the_provider_reads_the_deployment_model_once_however_the_body_is_spelled(raw):
    assert orjson.loads(raw)["model"] == "codex"  # what the proxy routes on
    assert_provider_reads_the_deployment(raw, rewrite(raw))
    assert_provider_reads_the_deployment(raw, rewrite(raw, inject=True), stream_options={"include_usage": True})


@pytest.mark.parametrize("dumps", [
    orjson.dumps,  # compact, as httpx and orjson write
    lambda body: json.dumps(body).encode(),  # ", " and ": ", as json.dumps writes by default
    lambda body: json.dumps(body, indent=2).encode(),  # newlines and indentation
])
def test_an_ordinary_body_is_spliced_not_re_encoded(dumps):
    raw = dumps({"messages": [{"role": "user", "content": "h\u00e9 \"model\""}], "model": "codex", "max_tokens": 5})
    start, end = model_member(raw)
    assert raw[start:end].replace(b" ", b"") == b'"model":"codex"'
    assert rewrite(raw) == raw[:start] + b'"model":"sim-spark"' + raw[end:]


@pytest.mark.parametrize("raw", [
    b'{"model":"gpt-pricier","messages":[],"model":"codex"}',
    b'{"model":"codex","mod\\u0065l":"codex"}',
    b'{"a":1,"model":"codex","a":1}',
    b'{"model":"codex"}{"model":"x"}',
    b'[{"model":"codex"}]',
])
def test_a_top_level_key_seen_twice_or_a_body_that_is_not_one_object_has_no_member_to_splice(raw):
    assert model_member(raw) is None


def test_a_body_too_deep_to_walk_or_re_encode_is_refused_not_mangled():
    raw = b'{"messages":' + b"[" * 1020 + b"]" * 1020 + b',"model":"codex"}'  # orjson reads it, msgspec does not
    with pytest.raises(InvalidRequest) as caught:
        rewrite(raw)
    assert caught.value.code == "nested_too_deeply"


def test_the_member_is_found_after_a_long_history_as_the_openai_sdk_orders_keys():
    history = [{"role": "tool", "content": 'print("model": 1) \\u00e9 ' * 200, "model": "nested"}] * 300
    raw = orjson.dumps({"messages": history, "model": "codex", "max_tokens": 16, "metadata": {"model": "m"}})
    start, end = model_member(raw)
    assert raw[start:end] == b'"model":"codex"'
    assert rewrite(raw) == raw[:start] + b'"model":"sim-spark"' + raw[end:]  # the rest byte for byte


def test_random_bodies_keep_every_member_but_the_model():
    """Random key orders, spacing, escaped key spellings, nested decoys and duplicates, fixed seeds."""
    rnd = random.Random(16)
    decoys = [{"model": "gpt-pricier"}, ['"model":', "model"], "\"model\": \"x\"", {"x": {"model": None}}]
    for _ in range(300):
        members = [("messages", [{"role": "user", "content": rnd.choice(decoys)}]), ("model", "codex"),
                   ("max_tokens", rnd.randint(1, 99)), ("metadata", rnd.choice(decoys))]
        duplicated = rnd.random() < 0.3
        if duplicated:
            members.append(("model", rnd.choice(["gpt-pricier", "codex"])))  # a duplicate ...
            members.append(("model", "codex"))  # ... the last of which the proxy and the provider read
        first = members[:4]
        rnd.shuffle(first)
        members[:4] = first  # any order; the duplicates stay last
        raw = _spell(members, rnd)
        assert orjson.loads(raw)["model"] == "codex"
        assert_provider_reads_the_deployment(raw, rewrite(raw))
        assert (model_member(raw) is None) is duplicated  # spliced in place unless a key repeats


def _spell(members: list[tuple[str, object]], rnd: random.Random) -> bytes:
    def space() -> str:
        return "".join(rnd.choice(" \t\n\r") for _ in range(rnd.randint(0, 2)))

    def key(name: str) -> str:
        return '"' + "".join(f"\\u{ord(c):04x}" if rnd.random() < 0.2 else c for c in name) + '"'

    parts = [space() + key(name) + space() + ":" + space() + json.dumps(value) + space() for name, value in members]
    return ("{" + ",".join(parts) + "}").encode()
