"""What counts as a candidate failing, and the error a client sees when every candidate failed."""
from __future__ import annotations

from proxy.errors import ProxyError
from proxy.limits.limiter import DeploymentLimited
from proxy.upstream.http_pool import UpstreamError, UpstreamTimeout


def is_failure(status: int) -> bool:
    """Statuses that send a request on to the next candidate (and count against a breaker)."""
    return status == 429 or status >= 500


def no_upstream_error(error: UpstreamError, failures: list[str]) -> ProxyError:
    """Client-facing error: names deployments and failure kinds, never upstream hosts or keys."""
    tried = ", ".join(failures)
    if isinstance(error, DeploymentLimited):
        return error.refusal(failures)
    if isinstance(error, UpstreamTimeout):
        return ProxyError(504, f"No upstream answered in time (tried: {tried}). Retry later.", code="upstream_timeout")
    return ProxyError(502, f"No upstream could be reached (tried: {tried}). Retry later.", code="upstream_unavailable")
