"""litellm's chat results rebuilt with exactly OpenAI's members."""
from __future__ import annotations

from openai.types.chat import ChatCompletionChunk

from proxy.upstream.litellm_chat import chat_chunks, chat_completion
from tests.unit.simulate.spec import conforms

HEAD = {"id": "chatcmpl-1", "created": 1, "model": "claude-sim", "object": "chat.completion.chunk",
        "system_fingerprint": None, "provider_specific_fields": None, "citations": None}
USAGE = {"completion_tokens": 3, "prompt_tokens": 5, "total_tokens": 8, "cache_read_input_tokens": 0,
         "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0, "text_tokens": 5}}


def _choice(delta: dict, finish: str | None = None) -> dict:
    return {"finish_reason": finish, "index": 0, "logprobs": None, "delta": {
        "provider_specific_fields": None, "content": None, "role": None, "function_call": None, "tool_calls": None,
        "audio": None, **delta}}


def test_usage_rides_its_own_chunk_and_empty_choices_are_dropped():
    [last] = chat_chunks({**HEAD, "choices": [_choice({})], "usage": USAGE}, include_usage=True)
    assert last["choices"] == [] and last["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    [text] = chat_chunks({**HEAD, "choices": [_choice({"content": "tok1 ", "role": "assistant"})]}, include_usage=True)
    assert text["usage"] is None and text["choices"][0]["delta"] == {"role": "assistant", "content": "tok1 ", "refusal": None}
    [plain] = chat_chunks({**HEAD, "choices": [_choice({"content": "tok2 "})]}, include_usage=False)
    assert "usage" not in plain and "provider_specific_fields" not in plain
    for chunk in (last, text, plain):
        conforms("CreateChatCompletionStreamResponse", chunk)
        ChatCompletionChunk.model_validate(chunk)


def test_tool_call_deltas_name_the_call_once():
    first = {"id": "toolu_1", "type": "function", "index": 0, "function": {"arguments": "", "name": "shell"}}
    more = {"id": None, "type": "function", "index": 0, "function": {"arguments": "{}", "name": None}}
    [a] = chat_chunks({**HEAD, "choices": [_choice({"content": "", "role": "assistant", "tool_calls": [first]})]}, False)
    [b] = chat_chunks({**HEAD, "choices": [_choice({"content": "", "tool_calls": [more]})]}, False)
    assert a["choices"][0]["delta"] == {"role": "assistant", "tool_calls": [
        {"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "shell", "arguments": ""}}], "refusal": None}
    assert b["choices"][0]["delta"] == {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}


def test_whole_completion():
    result = {**HEAD, "object": "chat.completion", "usage": USAGE, "choices": [{"finish_reason": "stop", "index": 0, "message": {
        "content": "hi", "role": "assistant", "tool_calls": None, "function_call": None,
        "provider_specific_fields": {"citations": None}}}]}
    body = chat_completion(result)
    conforms("CreateChatCompletionResponse", body)
    assert body["choices"][0] == {"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "hi", "refusal": None, "annotations": []}}
    assert body["usage"]["total_tokens"] == 8 and body["object"] == "chat.completion"
