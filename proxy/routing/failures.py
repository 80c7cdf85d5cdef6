"""What counts as a candidate failing, and the refusal a client gets when every candidate failed."""
from __future__ import annotations

from proxy.call import UpstreamError, UpstreamTimeout
from proxy.errors import DeploymentsLimited, Refused, UpstreamUnavailable
from proxy.limits.limiter import DeploymentLimited


def is_failure(status: int) -> bool:
    """Statuses that send a request on to the next candidate (and count against a breaker)."""
    return status == 429 or status >= 500


def no_upstream_error(error: UpstreamError, failures: list[str]) -> Refused:
    """Names deployments and failure kinds, never upstream hosts or keys."""
    tried = ", ".join(failures)
    if isinstance(error, DeploymentLimited):
        wait_s = max(1, -(-error.retry_ms // 1000)) if error.retry_ms > 0 else 1
        return DeploymentsLimited(f"Every deployment that serves this model is at its rate limit (tried: {tried}). "
                                  f"Retry after {wait_s}s.", retry_ms=error.retry_ms)
    if isinstance(error, UpstreamTimeout):
        return UpstreamUnavailable(f"No upstream answered in time (tried: {tried}). Retry later.", timed_out=True)
    return UpstreamUnavailable(f"No upstream could be reached (tried: {tried}). Retry later.", timed_out=False)
