"""The call vocabulary: what a parsed request and its usage say."""
from __future__ import annotations

from proxy.call import ModelRequest, Outcome, Usage


def test_token_limits_are_read_only_when_they_are_real_integers():
    def max_out(body):
        return ModelRequest.from_body("chat", b"{}", {"model": "m", **body}, "r").max_output_tokens
    assert max_out({"max_tokens": 7}) == 7 and max_out({"max_completion_tokens": 9, "max_tokens": 7}) == 9
    assert max_out({"max_tokens": True}) is None and max_out({}) is None


def test_streaming_and_the_prompt_estimate():
    req = ModelRequest.from_body("responses", None, {"model": "m", "stream": True}, "r", size=400)
    assert req.stream and req.input_estimate == 100
    assert not ModelRequest.from_body("embeddings", b"{}", {"model": "m", "stream": True}, "r").stream


def test_usage_in_either_vocabulary_lands_on_the_outcome():
    usage = Usage.from_openai({"input_tokens": 10, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 3},
                               "output_tokens_details": {"reasoning_tokens": 2}})
    outcome = Outcome("r", "responses", "route", "k", None)
    outcome.take_usage(usage)
    assert (outcome.input_tokens, outcome.output_tokens, outcome.cached_tokens, outcome.reasoning_tokens) == (10, 4, 3, 2)
    assert outcome.usage_reported and Usage.from_openai({"prompt_tokens": 1, "completion_tokens": 2}).output_tokens == 2
