"""Why a call was refused, in the domain's words: every refusal below the API layer.

Routing, limits, pricing and the upstream clients raise these; they know nothing of HTTP.
``proxy.api.errors`` alone turns each into a status, an OpenAI error body and headers, the
way httpcore keeps its exception vocabulary apart from the code that maps it.
"""
from __future__ import annotations


class Refused(Exception):
    """A call Laneway will not serve; ``code`` is the stable machine-readable reason."""

    code = "refused"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param


class InvalidRequest(Refused):
    """The request itself is wrong (a bad field or hint); retrying it unchanged cannot help."""

    code = "invalid_request"


class ModelNotFound(Refused):
    code = "model_not_found"


class UnsupportedEndpoint(Refused):
    """The chosen deployment cannot serve this endpoint."""

    code = "unsupported_endpoint"


class ClientLimited(Refused):
    """The client's own limit (key or team) refuses: no candidate would help.

    ``what`` is "requests", "tokens" or "concurrency"; ``retry_ms`` < 0 means never (the
    request alone is larger than the window).
    """

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, what: str, limit: int, retry_ms: int) -> None:
        super().__init__(message)
        self.what = what
        self.limit = limit
        self.retry_ms = retry_ms


class DeploymentsLimited(Refused):
    """Every candidate is at its rate limit; ``retry_ms`` is the shortest wait any of them named."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_ms: int) -> None:
        super().__init__(message)
        self.retry_ms = retry_ms


class UpstreamUnavailable(Refused):
    """No candidate could be reached (or none answered in time, ``timed_out``)."""

    code = "upstream_unavailable"

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message, code="upstream_timeout" if timed_out else None)
        self.timed_out = timed_out


class StoreUnavailable(Refused):
    """The limit store cannot answer and the policy says to refuse rather than guess (fail_closed)."""

    code = "store_unavailable"

    @classmethod
    def refusing(cls, what: str, code: str) -> "StoreUnavailable":
        return cls(f"{what} cannot be checked right now (the limit store is unreachable) and this proxy is "
                   "configured to refuse rather than guess. Retry in a few seconds.", code=code)


class BudgetExceeded(Refused):
    """A hard budget would be passed."""

    code = "insufficient_quota"
