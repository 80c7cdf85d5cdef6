"""Stored responses (``store: true``, the Responses default): retrieve, delete, list input items,
cancel, and continue with ``previous_response_id``. Bounded: the least recently used go first."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

DEFAULT_CAPACITY = 1024


@dataclass(slots=True)
class Stored:
    """One stored response: the object as served, its own input items, and the conversation up to
    and including its output (what a continuation builds on)."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    context: list[Any]

    @classmethod
    def of(cls, response: dict[str, Any], items: list[Any], context: list[Any]) -> Stored:
        """An entry for ``response`` whose own input was ``items`` (as the request sent them)."""
        return cls(response, _listed(items, response["id"].split("_", 1)[-1]), context)


def _listed(items: list[Any], suffix: str) -> list[dict[str, Any]]:
    """Input items as GET .../input_items lists them: with ids, status and typed content."""
    out = []
    for i, item in enumerate(items):
        listed = {"id": f"msg_{suffix}{i:04x}", **item}
        if listed.get("type", "message") == "message":
            kind = "output_text" if listed.get("role") == "assistant" else "input_text"
            content = listed.get("content")
            if isinstance(content, str):
                content = [{"type": kind, "text": content}]
            listed.update(type="message", content=content, status="completed")
        out.append(listed)
    return out


class ResponseStore:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, entry: Stored) -> None:
        rid = entry.response["id"]
        self._items[rid] = entry
        self._items.move_to_end(rid)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, rid: str) -> Stored | None:
        entry = self._items.get(rid)
        if entry is not None:
            self._items.move_to_end(rid)
        return entry

    def delete(self, rid: str) -> bool:
        return self._items.pop(rid, None) is not None

    def clear(self) -> None:
        self._items.clear()
