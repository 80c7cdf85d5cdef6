"""GET /admin/cost: the cost report as JSON for dashboards and scripts, for admin keys only.

Query: ``since`` and ``until`` (ISO dates or date-times, UTC unless an offset is given;
default: the last 24 hours; at most ``ledger.retention_days`` apart) and ``by`` (key, team,
model or deployment; default model).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.asgi import Receive, Scope, Send
from proxy.api.errors import ProxyError
from proxy.api.state import ProxyState
from proxy.pricing.reports import GROUPINGS, check_period, parse_instant
from proxy.store.usage import LedgerUnavailable


class AdminCost:
    def __init__(self, state: ProxyState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.respond(Request(scope, receive))
        await response(scope, receive, send)

    async def respond(self, request: Request) -> Response:
        try:
            key = self.state.runtime.auth.check(request.headers.get("authorization", "").encode("latin-1"))
            if not key.admin:
                raise ProxyError(403, "This endpoint needs an admin key: mark one with `admin: true` under `keys:` "
                                 "in the policy and send it as 'Authorization: Bearer <key>'.", code="admin_key_required")
            since, until, by = _query(request, self.state.accounting.policy.ledger.retention_days)
            try:
                report = await self.state.accounting.report(since, until, by)
            except LedgerUnavailable as exc:
                raise ProxyError(503, f"The usage ledger cannot be read right now: {exc}. Usage is still being "
                                 "recorded (buffered); retry when Redis is back.", code="ledger_unavailable") from None
        except ProxyError as error:
            return Response(error.body(), status_code=error.status, media_type="application/json")
        body = report.as_dict()
        body["ledger"] = _counters(self.state)
        return JSONResponse(body)


def _query(request: Request, max_days: int) -> tuple[datetime, datetime, str]:
    params = request.query_params
    now = datetime.now(timezone.utc)
    try:
        until = parse_instant(params["until"]) if params.get("until") else now
        since = parse_instant(params["since"]) if params.get("since") else until - timedelta(days=1)
    except ValueError:
        raise ProxyError(400, "since and until must be ISO dates or date-times, e.g. since=2026-11-01&until=2026-11-02T12:00Z.",
                         code="invalid_time", param="since") from None
    try:
        check_period(since, until, max_days)
    except ValueError as exc:
        raise ProxyError(400, f"{exc}.", code="invalid_time", param="since") from None
    by = params.get("by", "model")
    if by not in GROUPINGS:
        raise ProxyError(400, f"by must be one of {', '.join(GROUPINGS)}.", code="invalid_grouping", param="by")
    return since, until, by


def _counters(state: ProxyState) -> dict:
    counters = state.accounting.ledger.counters
    return {"recorded": counters.recorded, "flush_errors": counters.flush_errors,
            "buffered_rows": counters.buffered_rows, "overflow_requests": counters.overflow_requests}
