"""Stored responses stay bounded: the least recently used one goes first."""

from __future__ import annotations

from proxy.simulate.store import ResponseStore, Stored


def entry(rid: str) -> Stored:
    return Stored.of({"id": rid}, [{"role": "user", "content": "hello"}, {"type": "function_call_output", "call_id": "c", "output": "o"}], [])


def test_lru_bound_and_listed_items() -> None:
    store = ResponseStore(capacity=2)
    store.put(entry("resp_a"))
    store.put(entry("resp_b"))
    assert store.get("resp_a") is not None  # a is now the most recently used
    store.put(entry("resp_c"))
    assert len(store) == 2 and store.get("resp_b") is None and store.get("resp_a") and store.get("resp_c")
    assert store.delete("resp_a") and not store.delete("resp_a")
    listed = store.get("resp_c").input_items
    assert listed[0] == {"id": "msg_c0000", "type": "message", "role": "user", "status": "completed",
                         "content": [{"type": "input_text", "text": "hello"}]}
    assert listed[1]["type"] == "function_call_output" and listed[1]["id"] == "msg_c0001"
