"""What counts as a candidate failing, and the refusal a client gets when every candidate failed."""
from __future__ import annotations

import math

from proxy.call import UpstreamError, UpstreamTimeout
from proxy.errors import DeploymentsLimited, Refused, UpstreamUnavailable
from proxy.limits.limiter import DeploymentLimited


def is_failure(status: int) -> bool:
    """Statuses that send a request on to the next candidate (all but 429 also count against a breaker)."""
    return status == 429 or status >= 500


def no_upstream_error(error: UpstreamError, failures: list[str], holder: str | None = None) -> Refused:
    """Names deployments and failure kinds, never upstream hosts or keys; ``holder`` names the
    one deployment a request was bound to (it continues a response stored there)."""
    tried = ", ".join(failures)
    if isinstance(error, DeploymentLimited):
        wait_s = math.ceil(error.retry_ms / 1000) if error.retry_ms > 0 else 1
        what = f"{holder} is" if holder else "Every deployment that serves this model is"
        return DeploymentsLimited(f"{what} at its rate limit (tried: {tried}). Retry after {wait_s}s.",
                                  retry_ms=error.retry_ms)
    timed_out = isinstance(error, UpstreamTimeout)
    if holder:
        how = "did not answer in time" if timed_out else "cannot be reached"
        return UpstreamUnavailable(f"{holder} {how} (tried: {tried}); only it can continue that response. "
                                   "Retry later, or send the whole conversation without previous_response_id.",
                                   timed_out=timed_out)
    if timed_out:
        return UpstreamUnavailable(f"No upstream answered in time (tried: {tried}). Retry later.", timed_out=True)
    return UpstreamUnavailable(f"No upstream could be reached (tried: {tried}). Retry later.", timed_out=False)
