"""Each dialect's six headers, always, with the resets formatted as that provider formats them."""

from __future__ import annotations

from proxy.simulate.profiles import get_profile
from proxy.simulate.ratelimit import DAY, DEFAULT_LIMITS, RateLimiter


def test_openai_defaults_when_nothing_is_configured() -> None:
    limiter = RateLimiter(get_profile("instant"))
    assert limiter.admit(100.0, 40) == 0.0
    h = dict(limiter.headers(100.5))
    rpm, tpm, _ = DEFAULT_LIMITS["openai"]
    assert h == {b"x-ratelimit-limit-requests": b"%d" % rpm, b"x-ratelimit-limit-tokens": b"%d" % tpm,
                 b"x-ratelimit-remaining-requests": b"%d" % (rpm - 1), b"x-ratelimit-remaining-tokens": b"%d" % (tpm - 40),
                 b"x-ratelimit-reset-requests": b"59.5s", b"x-ratelimit-reset-tokens": b"59.5s"}


def test_cerebras_float_second_resets_and_a_bounded_day_window() -> None:
    limiter = RateLimiter(get_profile("instant", dialect="cerebras", rpd=10_000))
    for i in range(5000):
        assert limiter.admit(1000.0 + i / 1000, 1) == 0.0  # 5000 requests within 5 seconds
    assert len(limiter._day) <= 6  # one bucket a second, not one entry a request
    h = dict(limiter.headers(1004.25))
    assert h[b"x-ratelimit-remaining-requests-day"] == b"5000"
    assert float(h[b"x-ratelimit-reset-requests-day"]) == DAY - 4.25
    assert float(h[b"x-ratelimit-reset-tokens-minute"]) == 55.75
    assert h[b"x-ratelimit-limit-tokens-minute"] == b"%d" % DEFAULT_LIMITS["cerebras"][1]
    assert sorted(h) == sorted([b"x-ratelimit-limit-requests-day", b"x-ratelimit-limit-tokens-minute",
                                b"x-ratelimit-remaining-requests-day", b"x-ratelimit-remaining-tokens-minute",
                                b"x-ratelimit-reset-requests-day", b"x-ratelimit-reset-tokens-minute"])
