"""Policy limits -> store buckets, with hash-tagged keys so each scope lives on one Cluster node."""
from __future__ import annotations

from proxy.config.schema import Limits
from proxy.store.base import CONCURRENCY, COUNTED, PROVIDER, REQUESTS, TOKENS, Bucket

MINUTE_MS = 60_000
DAY_MS = 86_400_000
# (policy field, bucket kind, window length)
WINDOWS = (("rpm", REQUESTS, MINUTE_MS), ("tpm", TOKENS, MINUTE_MS), ("rpd", REQUESTS, DAY_MS), ("tpd", TOKENS, DAY_MS))


def _tag(scope: str, owner: str) -> str:
    safe = owner.replace("{", "(").replace("}", ")")
    return f"lw:{{{scope[0]}:{safe}}}"


def limit_buckets(scope: str, owner: str, limits: Limits | None, lease_ms: int, replicas: int = 1) -> tuple[Bucket, ...]:
    """The configured windows of one scope; ``replicas`` > 1 divides them (per-replica fail-open limits)."""
    if limits is None:
        return ()
    tag = _tag(scope, owner)
    out = []
    for name, kind, span in WINDOWS:
        value = getattr(limits, name)
        if value is None:
            continue
        key = f"{tag}:{name}"
        tokens = "t" + name[1:]  # rpm -> tpm, rpd -> tpd
        if kind == REQUESTS and getattr(limits, tokens) is not None:
            # the token window logs every request already: count its entries rather than log them twice
            kind, key = COUNTED, f"{tag}:{tokens}"
        out.append(Bucket(key, kind, max(1, value // replicas), span, scope, owner, name))
    if limits.concurrency is not None:
        out.append(Bucket(f"{tag}:conc", CONCURRENCY, max(1, limits.concurrency // replicas), lease_ms, scope, owner, "concurrency"))
    return tuple(out)


def provider_bucket(deployment: str) -> Bucket:
    return Bucket(f"{_tag('deployment', deployment)}:prov", PROVIDER, 0, 0, "deployment", deployment, "provider")
