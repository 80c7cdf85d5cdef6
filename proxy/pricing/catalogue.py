"""Default prices from litellm's bundled cost map, and the process's active price book.

Importing litellm takes seconds of CPU (holding the GIL, which stalls requests in flight),
so unless litellm is already imported the catalogue reads the same bundled JSON file that
``LITELLM_LOCAL_MODEL_COST_MAP=True`` makes litellm use — about 20 ms, once, at startup,
never on a request. The policy's own ``prices:`` always win over the catalogue.
"""
from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from proxy.config.schema import Deployment, Policy, PricePoint
from proxy.pricing.schedules import EPOCH, MILLION, PriceBook, Schedule, Tokens, cost

SOURCE = "litellm bundled cost map"
BUNDLED_MAP = "model_prices_and_context_window_backup.json"  # what LITELLM_LOCAL_MODEL_COST_MAP=True loads


class LitellmCatalogue:
    """Announced list prices for the models litellm knows (read from its local map, no network)."""

    def __init__(self) -> None:
        self.loaded = False
        self._map: dict[str, Any] = {}

    def load(self) -> None:
        module = sys.modules.get("litellm")
        if module is not None and isinstance(getattr(module, "model_cost", None), dict):
            self._map = module.model_cost  # already imported (via proxy.litellm_import): its local map
        else:
            spec = importlib.util.find_spec("litellm")  # locates the package without importing it
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError("litellm is not installed, so its bundled cost map is unavailable")
            path = Path(spec.submodule_search_locations[0]) / BUNDLED_MAP
            self._map = orjson.loads(path.read_bytes())
        self.loaded = True

    def lookup(self, model: str, provider: str | None) -> Schedule | None:
        names = (f"{provider}/{model}", model) if provider else (model,)
        for name in names:
            entry = self._map.get(name)
            if not isinstance(entry, dict):
                continue
            inp, out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
            if not isinstance(inp, (int, float)) or not isinstance(out, (int, float)):
                continue
            cached = entry.get("cache_read_input_token_cost")
            point = PricePoint(
                effective_from=EPOCH,
                input_per_mtok=per_mtok(inp),
                output_per_mtok=per_mtok(out),
                cached_input_per_mtok=per_mtok(cached) if isinstance(cached, (int, float)) else None,
                status="announced",
                source=f"{SOURCE}: {name}",
            )
            return Schedule(model, [point])
        return None


def per_mtok(per_token: float) -> Decimal:
    """litellm's float USD-per-token as exact USD per million tokens (1.5e-07 -> 0.15)."""
    return Decimal(repr(per_token)) * MILLION


_catalogue = LitellmCatalogue()
_active = PriceBook({}, _catalogue)


def catalogue() -> LitellmCatalogue:
    return _catalogue


def book_for(policy: Policy) -> PriceBook:
    """The policy's schedules over the shared catalogue."""
    return PriceBook.from_policy(policy.prices, _catalogue)


def activate(book: PriceBook) -> None:
    """Make ``book`` the one ``price_of`` answers from (called when a policy is loaded)."""
    global _active
    _active = book


def active() -> PriceBook:
    return _active


def price_of(deployment: Deployment, input_tokens: int, output_tokens: int, at: datetime | None = None) -> Decimal | None:
    """USD for a request of this size on ``deployment`` at the price in force now (or ``at``);
    None when the model has no known price — callers must not treat that as free."""
    point = _active.price_at(deployment.model, at or datetime.now(timezone.utc), deployment.provider)
    if point is None:
        return None
    return cost(point, Tokens(input=input_tokens, output=output_tokens))
