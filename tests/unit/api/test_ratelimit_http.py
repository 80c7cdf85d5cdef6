"""x-ratelimit-* and retry-after as OpenAI spells them."""
from __future__ import annotations

from proxy.api.ratelimit_http import client_headers, client_refusal_headers, go_duration
from proxy.errors import ClientLimited
from proxy.limits.limiter import ClientWindow


def test_go_durations_read_like_openais():
    assert [go_duration(s) for s in (0, 0.012, 1, 8.64, 360, 90.5, -1)] == ["0ms", "12ms", "1s", "8.64s", "6m0s", "1m30.5s", "0ms"]


def test_the_shortest_window_of_each_kind_is_reported_and_concurrency_is_not():
    windows = [ClientWindow("requests", 1000, 990, 80_000_000, 86_400_000), ClientWindow("requests", 60, 59, 1000, 60_000),
               ClientWindow("tokens", 9000, -5, 30_000, 60_000), ClientWindow("concurrency", 4, 3, 0, 30_000)]
    assert client_headers(windows) == [
        (b"x-ratelimit-limit-requests", b"60"), (b"x-ratelimit-remaining-requests", b"59"), (b"x-ratelimit-reset-requests", b"1s"),
        (b"x-ratelimit-limit-tokens", b"9000"), (b"x-ratelimit-remaining-tokens", b"0"), (b"x-ratelimit-reset-tokens", b"30s"),
    ]


def test_a_refusal_says_when_to_retry_unless_no_retry_can_help():
    assert client_refusal_headers(ClientLimited("x", what="tokens", limit=100, retry_ms=-1)) == {"x-ratelimit-limit-tokens": "100"}
    assert client_refusal_headers(ClientLimited("x", what="concurrency", limit=2, retry_ms=250)) == {
        "retry-after": "1", "retry-after-ms": "250"}
    assert client_refusal_headers(ClientLimited("x", what="requests", limit=60, retry_ms=2500))["x-ratelimit-reset-requests"] == "2.5s"
