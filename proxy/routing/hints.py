"""Per-request routing hints a client may send as headers, already parsed into plain values.

The API layer reads ``x-laneway-lane``, ``x-laneway-max-latency-ms`` and
``x-laneway-max-cost-usd`` and calls ``Hints.parse``; routing never sees the request itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from proxy.errors import InvalidRequest

# Lane names clients use -> hardware tags in the policy; a hardware tag itself is accepted too.
LANES = {"fast": "wafer", "deep": "gpu"}


@dataclass(frozen=True, slots=True)
class Hints:
    lane: str | None = None            # hardware tag to prefer
    max_latency_ms: float | None = None
    max_cost_usd: float | None = None

    @classmethod
    def parse(cls, lane: bytes | None, max_latency_ms: bytes | None, max_cost_usd: bytes | None) -> "Hints":
        tag = None
        if lane:
            name = lane.decode("latin-1").strip().lower()
            tag = LANES.get(name, name)
        return cls(tag, _positive(max_latency_ms, "x-laneway-max-latency-ms"), _positive(max_cost_usd, "x-laneway-max-cost-usd"))


NO_HINTS = Hints()


def _positive(raw: bytes | None, header: str) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise InvalidRequest(f"The {header} header must be a number greater than 0, e.g. {header}: 2000.",
                             code="invalid_hint", param=header)
    return value
