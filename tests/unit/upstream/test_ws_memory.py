"""Digests of what a pooled socket's provider remembers, and of the requests that may continue it."""
from __future__ import annotations

import orjson
import pytest

from proxy.upstream.ws_memory import conversation

BODY = {"model": "route", "store": False, "instructions": "be careful", "tools": [{"type": "function", "name": "sh"}],
        "max_output_tokens": 50}
A = {"role": "user", "content": "fix it"}
OUT = [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": "done", "annotations": []}]}]
B = {"role": "user", "content": "thanks"}


def remembered(items: list, output: list = OUT, body: dict = BODY, model: str = "m"):
    convo = conversation({**body, "input": items}, model)
    assert convo is not None
    return convo.memory("resp_1", output)


def prefix(items: list, count: int, body: dict = BODY, model: str = "m") -> bytes | None:
    convo = conversation({**body, "input": items}, model)
    return None if convo is None else convo.prefixes([count]).get(count)


def test_a_request_continues_the_turn_it_starts_with():
    memory = remembered([A])
    assert memory.count == 2 and memory.response_id == "resp_1"
    assert prefix([A, *OUT, B], 2) == memory.digest
    assert prefix([A, *OUT, B, B], 2) == memory.digest


def test_the_digest_does_not_depend_on_where_the_hashing_paused():
    items = [A, *OUT, B, A, B]
    convo = conversation({**BODY, "input": items}, "m")
    stepped = convo.prefixes([1, 2, 4])
    assert stepped == {n: prefix(items, n) for n in (1, 2, 4)}
    assert convo.memory("r", OUT).digest == remembered(items).digest


def test_key_order_and_whitespace_are_not_differences():
    raw = orjson.dumps({**BODY, "input": [A, *OUT, B]}).decode()
    spaced = orjson.loads(raw.replace(",", " ,\n ").replace(":", " : ").replace(": , \n", ":,"))
    reordered = {k: spaced[k] for k in reversed(list(spaced))}
    reordered["input"] = [{k: item[k] for k in reversed(list(item))} for item in reordered["input"]]
    assert prefix(reordered["input"], 2, body={k: v for k, v in reordered.items() if k != "input"}) \
        == remembered([A]).digest


@pytest.mark.parametrize("change", [
    {"instructions": "be quick"}, {"tools": []}, {"temperature": 0.2}, {"max_output_tokens": 51},
    {"tool_choice": "none"}, {"metadata": {"k": "v"}}, {"reasoning": {"effort": "high"}},
])
def test_other_parameters_are_another_conversation(change):
    assert prefix([A, *OUT, B], 2, body={**BODY, **change}) != remembered([A]).digest


def test_the_upstream_model_counts_and_stream_does_not():
    memory = remembered([A])
    assert prefix([A, *OUT, B], 2, model="other") != memory.digest
    assert prefix([A, *OUT, B], 2, body={**BODY, "stream": True}) == memory.digest
    assert prefix([A, *OUT, B], 2, body={**BODY, "model": "another-route"}) == memory.digest  # the upstream model rules


@pytest.mark.parametrize("edit", [
    lambda items: items.__setitem__(0, {"role": "user", "content": "fix it "}),  # a space inside a string
    lambda items: items[1]["content"][0].__setitem__("text", "Done"),
    lambda items: items[1].pop("status"),  # the client dropped a field the provider sent
    lambda items: items[1].__setitem__("status", None),
    lambda items: items.insert(1, B),
    lambda items: items.__setitem__(0, {"role": "user", "content": [{"type": "input_text", "text": "fix it"}]}),
])
def test_any_changed_earlier_item_is_another_conversation(edit):
    items = orjson.loads(orjson.dumps([A, *OUT, B]))
    edit(items)
    assert prefix(items, 2) != remembered([A]).digest


def test_numbers_are_compared_as_values_their_json_spells():
    memory = remembered([{"role": "user", "content": "x", "n": 1}])
    assert prefix([{"role": "user", "content": "x", "n": 1.0}, *OUT, B], 2) != memory.digest


@pytest.mark.parametrize("body", [
    {**BODY, "store": True}, {k: v for k, v in BODY.items() if k != "store"}, {**BODY, "previous_response_id": "r"},
    {**BODY, "conversation": "conv_1"}, {**BODY, "background": True},
])
def test_requests_that_chain_or_store_themselves_are_never_continued(body):
    assert conversation({**body, "input": [A]}, "m") is None


@pytest.mark.parametrize("value", ["hello", [], None, {"role": "user"}])
def test_input_that_is_not_a_list_of_items_is_never_continued(value):
    assert conversation({**BODY, "input": value}, "m") is None


def test_a_continuation_carries_at_least_one_new_item():
    memory = remembered([A])
    assert prefix([A, *OUT], 2) is None and prefix([A, *OUT], 0) is None
    assert memory.count == 2


def test_items_without_a_canonical_encoding_are_never_remembered_nor_matched():
    deep: object = "x"
    for _ in range(300):  # orjson encodes at most 254 levels
        deep = [deep]
    items = [A, {"role": "user", "content": deep}, B]
    convo = conversation({**BODY, "input": items}, "m")
    assert convo.prefixes([1, 2]) == {1: prefix([A, B], 1)} and convo.memory("r", OUT) is None
    assert conversation({**BODY, "metadata": deep, "input": [A]}, "m") is None


def test_a_huge_list_of_items_is_hashed_in_one_pass():
    items = [{"role": "user", "content": str(i)} for i in range(200_000)]
    convo = conversation({**BODY, "input": items}, "m")
    assert set(convo.prefixes([10, 100_000, 199_999, 200_000, 10**9])) == {10, 100_000, 199_999}
    assert convo.memory("r", OUT).count == 200_001
