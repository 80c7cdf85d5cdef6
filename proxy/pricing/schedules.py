"""Effective-dated price schedules and the arithmetic of one hour's usage at one price.

A model's price is a list of entries, each in force from its ``effective_from`` until the
next one starts; lookups take the instant explicitly, so a future-dated entry applies on
its date without anyone reloading anything. All money is ``Decimal``.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Protocol

from proxy.config.schema import PricePoint

MILLION = Decimal(1_000_000)
CENT = Decimal("0.01")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(slots=True)
class Tokens:
    """Token counts in OpenAI's vocabulary: ``cached`` is part of ``input``, ``reasoning`` part of ``output``."""

    input: int = 0
    cached: int = 0
    output: int = 0
    reasoning: int = 0
    requests: int = 0
    estimated: int = 0  # requests whose usage the proxy estimated because the provider never reported it

    def add(self, other: "Tokens") -> None:
        self.input += other.input
        self.cached += other.cached
        self.output += other.output
        self.reasoning += other.reasoning
        self.requests += other.requests
        self.estimated += other.estimated

    def as_dict(self) -> dict[str, int]:
        return {"input": self.input, "cached": self.cached, "output": self.output,
                "reasoning": self.reasoning, "requests": self.requests, "estimated": self.estimated}


def cost(price: PricePoint, tokens: Tokens) -> Decimal:
    """Exact USD for ``tokens`` at ``price`` (not rounded: round once, when showing a total)."""
    cached_rate = price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    reasoning_rate = price.output_per_mtok if price.reasoning_per_mtok is None else price.reasoning_per_mtok
    cached = min(tokens.cached, tokens.input)
    reasoning = min(tokens.reasoning, tokens.output)
    micro = (
        (tokens.input - cached) * price.input_per_mtok
        + cached * cached_rate
        + (tokens.output - reasoning) * price.output_per_mtok
        + reasoning * reasoning_rate
    )
    return micro / MILLION


class Schedule:
    """One model's price entries, oldest first; ``at(instant)`` is the entry in force then."""

    __slots__ = ("model", "entries", "_starts")

    def __init__(self, model: str, entries: Iterable[PricePoint]) -> None:
        self.model = model
        self.entries = tuple(sorted(entries, key=lambda p: p.effective_from))
        self._starts = [p.effective_from for p in self.entries]

    def at(self, instant: datetime) -> PricePoint | None:
        index = bisect.bisect_right(self._starts, instant) - 1
        return self.entries[index] if index >= 0 else None

    def with_entry(self, entry: PricePoint) -> "Schedule":
        """This schedule plus ``entry`` (replacing one that starts at the same instant)."""
        kept = [p for p in self.entries if p.effective_from != entry.effective_from]
        return Schedule(self.model, [*kept, entry])


class PriceBook:
    """Every known schedule by model id: the policy's own first, then the bundled catalogue.

    ``fallback`` is consulted (and its answers remembered) for models the policy does not
    price, so the litellm catalogue is only ever asked about models actually used.
    """

    def __init__(self, schedules: Mapping[str, Schedule], fallback: "Catalogue | None" = None) -> None:
        self._schedules = dict(schedules)
        self._fallback = fallback
        self._misses: set[str] = set()

    @classmethod
    def from_policy(cls, prices: Mapping[str, tuple[PricePoint, ...]], fallback: "Catalogue | None" = None) -> "PriceBook":
        return cls({model: Schedule(model, entries) for model, entries in prices.items()}, fallback)

    def schedule(self, model: str, provider: str | None = None) -> Schedule | None:
        found = self._schedules.get(model)
        if found is not None or model in self._misses:
            return found
        if self._fallback is None or not self._fallback.loaded:
            return None  # not remembered as a miss: the catalogue may load later
        found = self._fallback.lookup(model, provider)
        if found is None:
            self._misses.add(model)
        else:
            self._schedules[model] = found
        return found

    def price_at(self, model: str, instant: datetime, provider: str | None = None) -> PricePoint | None:
        schedule = self.schedule(model, provider)
        return schedule.at(instant) if schedule is not None else None

    def with_entry(self, model: str, entry: PricePoint) -> "PriceBook":
        """A copy with ``entry`` added to ``model``'s schedule: what `laneway cost reprice` previews."""
        current = self.schedule(model)
        updated = current.with_entry(entry) if current is not None else Schedule(model, [entry])
        return PriceBook({**self._schedules, model: updated}, self._fallback)


class Catalogue(Protocol):
    """Prices for models the policy does not list: see ``proxy.pricing.catalogue``."""

    loaded: bool

    def lookup(self, model: str, provider: str | None) -> Schedule | None: ...
