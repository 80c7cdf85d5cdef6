"""Provider rate-limit headers in every dialect, as the providers send them (samples from their docs/responses)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from proxy.limits import provider_headers
from proxy.limits.provider_headers import parse_headers, parse_reset

NOW = datetime(2024, 8, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in pairs]


OPENAI = h(
    ("x-ratelimit-limit-requests", "60"), ("x-ratelimit-limit-tokens", "150000"),
    ("x-ratelimit-remaining-requests", "59"), ("x-ratelimit-remaining-tokens", "149984"),
    ("x-ratelimit-reset-requests", "1s"), ("x-ratelimit-reset-tokens", "6m0s"),
    ("content-type", "application/json"),
)
CEREBRAS = h(
    ("x-ratelimit-limit-requests-day", "14400"), ("x-ratelimit-limit-tokens-minute", "60000"),
    ("x-ratelimit-remaining-requests-day", "14399"), ("x-ratelimit-remaining-tokens-minute", "59889"),
    ("x-ratelimit-reset-requests-day", "33011.38"), ("x-ratelimit-reset-tokens-minute", "11.38"),
)
GROQ = h(
    ("x-ratelimit-limit-requests", "14400"), ("x-ratelimit-limit-tokens", "18000"),
    ("x-ratelimit-remaining-requests", "14370"), ("x-ratelimit-remaining-tokens", "17997"),
    ("x-ratelimit-reset-requests", "2m59.56s"), ("x-ratelimit-reset-tokens", "7.66s"),
)
ANTHROPIC = h(
    ("anthropic-ratelimit-requests-limit", "50"), ("anthropic-ratelimit-requests-remaining", "49"),
    ("anthropic-ratelimit-requests-reset", "2024-08-01T12:00:01Z"),
    ("anthropic-ratelimit-tokens-limit", "80000"), ("anthropic-ratelimit-tokens-remaining", "79000"),
    ("anthropic-ratelimit-tokens-reset", "2024-08-01T12:00:30Z"),
    ("anthropic-ratelimit-input-tokens-limit", "40000"), ("anthropic-ratelimit-input-tokens-remaining", "39500"),
    ("anthropic-ratelimit-input-tokens-reset", "2024-08-01T12:00:12.5+00:00"),
    ("anthropic-ratelimit-output-tokens-limit", "8000"), ("anthropic-ratelimit-output-tokens-remaining", "7500"),
    ("anthropic-ratelimit-output-tokens-reset", "2024-08-01T12:00:06Z"),
    ("request-id", "req_018EeWyXxfu5pfWkrYcMdjWG"),
)
OPENAI_429 = h(
    ("x-ratelimit-limit-requests", "60"), ("x-ratelimit-remaining-requests", "0"),
    ("x-ratelimit-reset-requests", "12ms"), ("retry-after", "1"), ("retry-after-ms", "12"),
)
ANTHROPIC_429 = h(("retry-after", "17"), ("anthropic-ratelimit-requests-remaining", "0"),
                  ("anthropic-ratelimit-requests-limit", "50"), ("anthropic-ratelimit-requests-reset", "2024-08-01T12:00:17Z"))
HTTP_DATE_429 = h(("retry-after", "Thu, 01 Aug 2024 12:00:05 GMT"))


@pytest.mark.parametrize("provider, spans", [
    ("groq", {"requests": 86_400.0, "tokens": 60.0}),
    ("openai", {"requests": 60.0, "tokens": 60.0}),
])
def test_groqs_requests_window_is_per_day(provider, spans):
    """Groq and OpenAI send the same names; Groq's requests limit is per day (14,400 = RPD), OpenAI's per minute."""
    assert {w.window: w.span_s for w in parse_headers(GROQ, NOW, provider).windows} == spans
    assert {w.window: w.span_s for w in parse_headers(CEREBRAS, NOW, provider).windows} == \
        {"requests-day": 86_400.0, "tokens-minute": 60.0}


@pytest.mark.parametrize(
    "headers, expected, retry_after",
    [
        (OPENAI, {"requests": ("requests", 60, 59, 1.0), "tokens": ("tokens", 150000, 149984, 360.0)}, None),
        (CEREBRAS, {"requests-day": ("requests", 14400, 14399, 33011.38), "tokens-minute": ("tokens", 60000, 59889, 11.38)}, None),
        (GROQ, {"requests": ("requests", 14400, 14370, 179.56), "tokens": ("tokens", 18000, 17997, 7.66)}, None),
        (ANTHROPIC, {
            "requests": ("requests", 50, 49, 1.0), "tokens": ("tokens", 80000, 79000, 30.0),
            "input-tokens": ("tokens", 40000, 39500, 12.5), "output-tokens": ("tokens", 8000, 7500, 6.0),
        }, None),
        (OPENAI_429, {"requests": ("requests", 60, 0, 0.012)}, 0.012),  # retry-after-ms wins over retry-after
        (ANTHROPIC_429, {"requests": ("requests", 50, 0, 17.0)}, 17.0),
        (HTTP_DATE_429, {}, 5.0),
        (h(("content-type", "application/json"), ("x-request-id", "abc")), {}, None),
    ],
    ids=["openai", "cerebras", "groq", "anthropic", "openai-429", "anthropic-429", "retry-after-date", "none"],
)
def test_dialects(headers, expected, retry_after):
    report = parse_headers(headers, NOW)
    got = {w.window: (w.kind, w.limit, w.remaining, w.reset_s) for w in report.windows}
    assert got.keys() == expected.keys()
    for window, (kind, limit, remaining, reset) in expected.items():
        assert got[window][:3] == (kind, limit, remaining)
        assert got[window][3] == pytest.approx(reset, abs=1e-6)
    if retry_after is None:
        assert report.retry_after_s is None
    else:
        assert report.retry_after_s == pytest.approx(retry_after, abs=1e-6)
    assert bool(report) == bool(expected or retry_after is not None)


@pytest.mark.parametrize(
    "value, seconds",
    [("6m0s", 360.0), ("12ms", 0.012), ("1h2m3.5s", 3723.5), ("250us", 0.00025), ("0s", 0.0), ("33011.38", 33011.38),
     ("2024-08-01T12:01:00Z", 60.0), ("2024-08-01T11:59:00Z", 0.0), ("soon", None), ("6m0", None), ("", None),
     ("59.999s", 59.999), ("5ns", 5e-9), ("1.5.5s", None), ("infs", None), ("nanms", None), ("-5s", None), (".s", None),
     ("s", None), ("ms", None)],
)
def test_reset_formats(value, seconds):
    got = parse_reset(value, NOW)
    assert got == (None if seconds is None else pytest.approx(seconds, abs=1e-9))


def test_garbage_values_are_ignored_not_fatal():
    report = parse_headers(h(("x-ratelimit-remaining-requests", "lots"), ("x-ratelimit-limit-requests", "10"),
                             ("x-ratelimit-reset-requests", "whenever"), ("x-ratelimit-limit-bananas", "3")), NOW)
    [window] = report.windows
    assert (window.window, window.limit, window.remaining, window.reset_s) == ("requests", 10, None, None)


def test_a_date_reset_is_read_against_each_response_time_not_remembered():
    """Names and duration resets are remembered between responses; a date's distance from now is not."""
    first = {w.window: w.reset_s for w in parse_headers(ANTHROPIC, NOW).windows}
    later = {w.window: w.reset_s for w in parse_headers(ANTHROPIC, NOW + 10).windows}
    assert later == {window: pytest.approx(max(0.0, seconds - 10)) for window, seconds in first.items()}
    again = parse_headers(OPENAI, NOW + 10)  # remembered durations: the same figures as the first reading
    assert {w.window: w.reset_s for w in again.windows} == {"requests": 1.0, "tokens": 360.0}


def test_an_upstream_inventing_names_and_values_cannot_grow_memory_or_confuse_later_reads():
    for i in range(3 * provider_headers._CACHED):
        parse_headers(h((f"x-ratelimit-limit-requests-{i}", "1"), ("x-ratelimit-reset-requests", f"{i}ms"),
                        (f"x-junk-{i}", "1")), NOW)
    assert len(provider_headers._NAMES) <= provider_headers._CACHED
    assert len(provider_headers._RESETS) <= provider_headers._CACHED
    report = parse_headers(h(*((k.decode(), v.decode()) for k, v in OPENAI), ("x-ratelimit-reset-requests", "9999ms")), NOW)
    assert {w.window: (w.limit, w.remaining, w.reset_s) for w in report.windows} == {
        "requests": (60, 59, pytest.approx(9.999)), "tokens": (150000, 149984, 360.0)}
