"""What a provider remembers on a pooled socket, kept as digests, so a resent conversation can continue it.

In Responses WebSocket mode the provider keeps each connection's last response (its input and
output items) in memory and continues it from ``previous_response_id`` + new items at a fraction
of a fresh request's cost. HTTP clients resend the whole conversation every turn. When a request's
parameters equal those of a socket's last turn and its input starts with that turn's input and
output, the rest is all the provider needs.

Equality is decided on SHA-256 digests of canonical JSON (keys sorted, compact): key order and
whitespace do not matter, every value must be equal. A socket's memory costs a few dozen bytes
whatever the conversation's size; a request's items are hashed once, with each boundary a
remembered socket needs taken on the way.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

# input is compared item by item; stream shapes only the reply; the upstream model stands for model
_NOT_PARAMS = frozenset({"input", "stream", "model"})
_CANONICAL = orjson.OPT_SORT_KEYS


@dataclass(frozen=True, slots=True)
class Memory:
    """One socket's last completed turn: its response id, and its parameters + input + output items
    (``count`` of them) as one digest."""

    response_id: str
    count: int
    digest: bytes


class Conversation:
    """A request a socket may continue: the running digest of its parameters and input items.

    The digest of the first n items is that of their canonical encodings joined by commas (as in a
    JSON array without its brackets), so it does not depend on where the hashing paused."""

    __slots__ = ("items", "_hash", "_hashed", "_broken")

    def __init__(self, head: hashlib._Hash, items: list) -> None:
        self.items = items
        self._hash = head
        self._hashed = 0
        self._broken = False

    def prefixes(self, counts: Iterable[int]) -> dict[int, bytes]:
        """The digest of the parameters and the first n items, for each n of ``counts`` that leaves at
        least one item new (a continuation carries something)."""
        out: dict[int, bytes] = {}
        for n in sorted({n for n in counts if self._hashed <= n < len(self.items)}):
            if n and self._feed(self.items[self._hashed:n]):
                out[n] = self._hash.copy().digest()
        return out

    def memory(self, response_id: str, output: list) -> Memory | None:
        """What the provider remembers once this request was answered with ``output``; None if an
        item has no canonical encoding (then nothing can continue it)."""
        if not self._feed(self.items[self._hashed:]) or not self._feed(output):
            return None
        return Memory(response_id, self._hashed, self._hash.digest())

    def _feed(self, items: list) -> bool:
        if self._broken:
            return False
        if items:
            try:
                encoded = orjson.dumps(items, option=_CANONICAL)
            except orjson.JSONEncodeError:  # e.g. nested deeper than orjson encodes
                self._broken = True
                return False
            if self._hashed:
                self._hash.update(b",")
            self._hash.update(memoryview(encoded)[1:-1])
            self._hashed += len(items)
        return True


def conversation(body: dict, model: str) -> Conversation | None:
    """The digests of a Responses request a socket may continue; None when none may: the client
    chains responses itself (``previous_response_id``, ``conversation``), asks the provider to store
    the response (a stored continuation would name, and list input of, a response the client never
    saw), runs it in the background, or sends no list of items."""
    items = body.get("input")
    if (body.get("store") is not False or not isinstance(items, list) or not items or body.get("background")
            or "previous_response_id" in body or "conversation" in body):
        return None
    params = {k: v for k, v in body.items() if k not in _NOT_PARAMS}
    try:
        head = hashlib.sha256(orjson.dumps(model) + orjson.dumps(params, option=_CANONICAL))
    except orjson.JSONEncodeError:
        return None
    return Conversation(head, items)
