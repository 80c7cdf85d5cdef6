"""The one map from domain refusals to what a client sees: status, OpenAI error type, headers."""
from __future__ import annotations

import orjson
import pytest

from proxy.api.errors import ProxyError, http_error
from proxy.errors import (
    BudgetExceeded,
    ClientLimited,
    DeploymentsLimited,
    InvalidRequest,
    ModelNotFound,
    StoreUnavailable,
    UnsupportedEndpoint,
    UpstreamUnavailable,
)


@pytest.mark.parametrize("refusal, status, kind, code", [
    (InvalidRequest("bad", param="n"), 400, "invalid_request_error", "invalid_request"),
    (UnsupportedEndpoint("no"), 400, "invalid_request_error", "unsupported_endpoint"),
    (ModelNotFound("none", param="model"), 404, "invalid_request_error", "model_not_found"),
    (ClientLimited("slow", what="requests", limit=5, retry_ms=1500), 429, "rate_limit_error", "rate_limit_exceeded"),
    (DeploymentsLimited("all busy", retry_ms=0), 429, "rate_limit_error", "rate_limit_exceeded"),
    (BudgetExceeded("spent"), 429, "insufficient_quota", "insufficient_quota"),
    (StoreUnavailable.refusing("Rate limits", "rate_limit_store_unavailable"), 503, "server_error", "rate_limit_store_unavailable"),
    (UpstreamUnavailable("down", timed_out=False), 502, "server_error", "upstream_unavailable"),
    (UpstreamUnavailable("slow", timed_out=True), 504, "server_error", "upstream_timeout"),
])
def test_every_refusal_maps_to_its_status_type_and_code(refusal, status, kind, code):
    error = http_error(refusal)
    assert isinstance(error, ProxyError) and (error.status, error.type, error.code) == (status, kind, code)
    body = orjson.loads(error.body())["error"]
    assert body == {"message": refusal.message, "type": kind, "param": refusal.param, "code": code}


def test_waits_become_retry_headers():
    assert http_error(ClientLimited("slow", what="requests", limit=5, retry_ms=1500)).headers["retry-after"] == "2"
    assert http_error(DeploymentsLimited("busy", retry_ms=0)).headers == {"retry-after": "1", "retry-after-ms": "1000"}
    assert http_error(StoreUnavailable.refusing("Budgets", "budget_store_unavailable")).headers["retry-after"] == "1"
