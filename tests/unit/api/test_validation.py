"""proxy.api.validation: what passes (OpenAI's nulls and numeric forms) as much as what does not."""
from __future__ import annotations

import pytest

from proxy.api.validation import MAX_TOKENS, validate
from proxy.api.errors import ProxyError

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("endpoint, body", [
    ("chat", {"messages": MESSAGES}),
    ("chat", {"messages": MESSAGES, "max_tokens": None, "temperature": None, "n": None, "stream": None,
              "stream_options": None, "top_p": None}),
    ("chat", {"messages": MESSAGES, "max_tokens": 1, "max_completion_tokens": MAX_TOKENS, "temperature": 0,
              "top_p": 1, "n": 128, "stream": True, "stream_options": {"include_usage": True}}),
    ("chat", {"messages": MESSAGES, "temperature": 1.5, "top_p": 0.0, "stream": False}),
    ("completions", {"prompt": "hi", "max_tokens": 16}),
    ("completions", {"prompt": ["a", "b"], "n": 2}),
    ("responses", {"input": "hi", "max_output_tokens": 64, "stream": True}),
    ("responses", {"input": [{"role": "user", "content": "hi"}]}),
    ("embeddings", {"input": "hi"}),
    ("embeddings", {"input": [[1, 2, 3]]}),
])
def test_valid_bodies_pass(endpoint, body):
    validate(endpoint, {"model": "m", **body})


@pytest.mark.parametrize("value, code, words", [
    (-1, "integer_below_min_value", "Expected a value >= 1, but got -1 instead."),
    (MAX_TOKENS + 1, "integer_above_max_value", f"Expected a value <= {MAX_TOKENS}"),
    (True, "invalid_type", "expected an integer, but got a boolean instead."),
    ([5], "invalid_type", "expected an integer, but got an array instead."),
])
def test_token_caps_are_refused_in_openai_wording(value, code, words):
    with pytest.raises(ProxyError) as caught:
        validate("chat", {"model": "m", "messages": MESSAGES, "max_tokens": value})
    error = caught.value
    assert (error.status, error.type, error.param, error.code) == (400, "invalid_request_error", "max_tokens", code)
    assert words in error.message


def test_missing_messages_reads_like_openai():
    with pytest.raises(ProxyError) as caught:
        validate("chat", {"model": "m"})
    assert caught.value.message == "Missing required parameter: 'messages'."
    assert (caught.value.param, caught.value.code) == ("messages", "missing_required_parameter")
