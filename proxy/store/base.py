"""The store interface the limiter talks to: a few atomic operations on named buckets.

Both stores implement the same algorithm (see docs/limits.md): a sliding-window log per
request/token window (a request window beside a token window of the same span counts the
token log's entries instead of keeping its own), a lease set per concurrency limit, and a small hash of what the
provider last said it had left. Every operation is atomic per hash tag, and one call per
Redis node checks-and-reserves every bucket of a request.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.errors import InvalidRequest

# Bucket kinds.
REQUESTS = "n"      # sliding-window log, one entry per request
COUNTED = "m"       # requests counted in the TOKENS log of the same span (rpm beside tpm): no log of its own
TOKENS = "t"        # sliding-window log, one entry per request carrying its token amount
CONCURRENCY = "c"   # lease set: one entry per in-flight request, scored by its expiry
PROVIDER = "p"      # what the provider said it has left, per window, until its reset


class StoreError(Exception):
    """The store could not answer in time (or at all); the limiter applies on_store_error."""


MAX_AMOUNT = 2**53 - 1  # the largest integer a Lua number (a double) holds exactly


class AmountError(InvalidRequest):
    """An amount no store takes (not an integer, or out of range): bad input or a caller's bug.
    Refused before anything is reserved or counted; never mistaken for a store outage."""

    code = "invalid_amount"


def check_amount(value: object, what: str, low: int) -> int:
    """``value`` if it is an integer in [``low``, MAX_AMOUNT] (bools are not integers here)."""
    if type(value) is not int or not low <= value <= MAX_AMOUNT:
        raise AmountError(f"{what} must be a whole number from {low} to {MAX_AMOUNT}, not {value!r:.40}")
    return value


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit on one scope: ``key`` carries a ``{hash tag}`` shared by all of a scope's buckets."""

    key: str
    kind: str
    limit: int      # 0 for PROVIDER buckets
    span_ms: int    # window length; lease time-to-live for CONCURRENCY
    scope: str      # "client" | "deployment"
    owner: str      # key name or deployment name
    window: str     # "rpm", "tpm", "rpd", "tpd", "concurrency", "provider"

    @property
    def tag(self) -> str:
        """The hash tag: buckets sharing it live on one Redis Cluster node."""
        return self.key[self.key.index("{") : self.key.index("}") + 1]

    @property
    def amounts_key(self) -> str:
        """Token windows keep each entry's amount (and the running total) in a hash beside the log
        (a COUNTED window's key is its token window's, so it names the same hash); a concurrency
        set keeps there the slots of quota leases, one entry holding several."""
        return self.key + ":a"

    @property
    def logged(self) -> bool:
        """A bucket with an amounts hash beside its sorted set (every kind but REQUESTS and PROVIDER)."""
        return self.kind == TOKENS or self.kind == COUNTED or self.kind == CONCURRENCY


@dataclass(slots=True)
class AdmitResult:
    """``refused`` is the index of the first bucket that said no (-1: admitted).

    ``retry_ms`` is how long until that bucket could take the request (-1: never, the
    request alone exceeds the limit). ``remaining`` / ``reset_ms`` are per bucket, after
    this request (PROVIDER buckets report -1).
    """

    refused: int
    retry_ms: int
    remaining: list[int]
    reset_ms: list[int]

    @property
    def admitted(self) -> bool:
        return self.refused < 0


@dataclass(slots=True)
class LeaseGrant:
    """A quota lease's answer: ``result`` as an admission's (refused, or each bucket's remaining and
    reset after the lease), and how many requests, tokens and concurrency slots it borrowed."""

    result: AdmitResult
    requests: int = 0
    tokens: int = 0
    slots: int = 0


@dataclass(slots=True)
class SpendResult:
    """A budget reservation's answer: ``refused`` is the index of the first counter whose hard
    limit it would pass (-1: reserved in all); ``spent`` is each counter's total before it (micro-USD)."""

    refused: int
    spent: list[int]

    @property
    def admitted(self) -> bool:
        return self.refused < 0


@dataclass(frozen=True, slots=True)
class ProviderWindowState:
    """One window as the provider reported it: ``kind`` is "requests" or "tokens"."""

    window: str
    kind: str
    remaining: int
    reset_ms: int   # from now


class Store(Protocol):
    background_failed: Callable[[StoreError], None] | None
    """Told when writes queued off the request path (settles, provider reports) could not land."""

    async def admit(self, rid: str, buckets: Sequence[Bucket], amounts: Sequence[int]) -> AdmitResult:
        """Check every bucket; reserve ``amounts`` in all of them only if all have room."""

    async def settle(self, rid: str, buckets: Sequence[Bucket], tokens: int | None) -> None:
        """End a reservation: token entries become ``tokens`` (None: undo it entirely), leases go."""

    async def renew(self, rid: str, buckets: Sequence[Bucket]) -> None:
        """Push the expiry of ``rid``'s concurrency leases one time-to-live into the future."""

    def learn(self, bucket: Bucket, windows: Sequence[ProviderWindowState], exhausted_ms: int) -> None:
        """Record the provider's word, without a round trip of its own: it is applied before the
        next admission this store answers; ``exhausted_ms`` > 0 refuses the deployment for that long."""

    async def reserve_spend(self, keys: Sequence[str], hard: Sequence[int], amount: int,
                            expire_at_ms: Sequence[int]) -> SpendResult:
        """Budget counters (integer micro-USD): add ``amount`` to every one of ``keys`` only if none
        would pass its ``hard`` limit (-1: no hard limit); each key expires at its ``expire_at_ms``."""

    async def adjust_spend(self, keys: Sequence[str], delta: int, expire_at_ms: Sequence[int]) -> None:
        """Add ``delta`` (actual minus reserved, or a cost nothing reserved) to every counter."""

    async def seed_spend(self, key: str, amount: int, expire_at_ms: int) -> None:
        """Set a counter that does not exist yet (spend recorded before the counters did)."""

    async def aclose(self) -> None: ...


def bucket_amounts(buckets: Sequence[Bucket], tokens: int) -> list[int]:
    """What a request of ``tokens`` takes from each bucket."""
    return [tokens if b.kind in (TOKENS, PROVIDER) else 1 for b in buckets]
