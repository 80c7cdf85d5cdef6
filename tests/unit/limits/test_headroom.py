"""The one headroom learner: windows per provider dialect, a 429 bounded to the window it names."""
from __future__ import annotations

import pytest

from proxy.limits.headroom import HIDDEN, HeadroomLearner

NOW = 1000.0
DAY = 86_400.0


def h(**fields: str) -> list[tuple[bytes, bytes]]:
    return [(name.replace("_", "-").encode(), value.encode()) for name, value in fields.items()]


OPENAI = h(x_ratelimit_limit_requests="30", x_ratelimit_remaining_requests="29", x_ratelimit_reset_requests="2s",
           x_ratelimit_limit_tokens="60000", x_ratelimit_remaining_tokens="59000", x_ratelimit_reset_tokens="1s")
GROQ = h(x_ratelimit_limit_requests="14400", x_ratelimit_remaining_requests="14370", x_ratelimit_reset_requests="2m59.56s",
         x_ratelimit_limit_tokens="18000", x_ratelimit_remaining_tokens="17997", x_ratelimit_reset_tokens="7.66s")
CEREBRAS = h(x_ratelimit_limit_requests_day="14400", x_ratelimit_remaining_requests_day="14000",
             x_ratelimit_reset_requests_day="33011.38", x_ratelimit_limit_tokens_minute="60000",
             x_ratelimit_remaining_tokens_minute="1000", x_ratelimit_reset_tokens_minute="30.5")
ANTHROPIC = h(anthropic_ratelimit_requests_limit="50", anthropic_ratelimit_requests_remaining="49",
              anthropic_ratelimit_requests_reset="2099-01-01T00:00:00Z",
              anthropic_ratelimit_input_tokens_limit="40000", anthropic_ratelimit_input_tokens_remaining="100",
              anthropic_ratelimit_input_tokens_reset="2099-01-01T00:00:00Z")


@pytest.mark.parametrize("headers, windows", [
    (OPENAI, {"requests": (29, 30, 2.0), "tokens": (59000, 60000, 1.0)}),
    (GROQ, {"requests": (14370, 14400, 179.56), "tokens": (17997, 18000, 7.66)}),
    (CEREBRAS, {"requests-day": (14000, 14400, 33011.38), "tokens-minute": (1000, 60000, 30.5)}),
], ids=["openai", "groq", "cerebras"])
def test_every_window_keeps_its_own_figures(headers, windows):
    learner = HeadroomLearner()
    learner.learn("lane", 200, headers, now=NOW)
    room = learner.headroom("lane")
    got = {name: (w.remaining, w.limit, round(w.reset_at - NOW, 2)) for name, w in room.windows.items()}
    assert got == windows


@pytest.mark.parametrize("provider, requests_span", [("groq", DAY), ("openai", 60.0), ("", 60.0)])
def test_each_window_knows_the_period_it_refills_over(provider, requests_span):
    """Groq's unsuffixed ``requests`` window is per day; OpenAI's (and an unknown provider's) per minute."""
    learner = HeadroomLearner()
    learner.learn("lane", 200, GROQ, now=NOW, provider=provider)
    learner.learn("lane", 200, CEREBRAS, now=NOW, provider=provider)
    learner.admitted("lane", "rpd", "requests", 10, 500, 30, span_s=DAY, now=NOW)
    spans = {name: w.span_s for name, w in learner.headroom("lane").windows.items()}
    assert spans == {"requests": requests_span, "tokens": 60.0, "requests-day": DAY, "tokens-minute": 60.0, "rpd": DAY}


def test_anthropic_windows_and_the_tightest_binds():
    learner = HeadroomLearner()
    learner.learn("claude", 200, ANTHROPIC, now=NOW)
    room = learner.headroom("claude")
    assert set(room.windows) == {"requests", "input-tokens"}
    assert room.short(need_tokens=200, min_requests=1, min_tokens=0, now=NOW) == "tokens"
    assert room.short(need_tokens=50, min_requests=1, min_tokens=0, now=NOW) is None
    assert room.fraction_left(NOW) == pytest.approx(100 / 40000)


def test_a_cerebras_429_blocks_for_its_retry_after_not_until_the_daily_reset():
    """The regression: one per-minute 429 used to spill the lane until the per-day window reset."""
    learner = HeadroomLearner()
    learner.learn("wafer", 200, CEREBRAS, now=NOW)
    refused = [*CEREBRAS, (b"retry-after", b"2")]
    learner.learn("wafer", 429, refused, now=NOW + 1)
    room = learner.headroom("wafer")
    assert room.short(10, 1, 0, NOW + 2) == "requests"
    assert room.short(10, 1, 0, NOW + 3.5) is None, "the lane is back once the 429's wait is over"
    assert room.windows["requests-day"].remaining == 14000, "a window the 429 did not name keeps its count"


def test_a_429_bounds_the_window_it_names_by_its_retry_after():
    learner = HeadroomLearner()
    named = h(x_ratelimit_limit_tokens_minute="60000", x_ratelimit_remaining_tokens_minute="0",
              x_ratelimit_reset_tokens_minute="50", x_ratelimit_remaining_requests_day="100",
              x_ratelimit_limit_requests_day="14400", x_ratelimit_reset_requests_day="80000", retry_after_ms="3000")
    learner.learn("wafer", 429, named, now=NOW)
    room = learner.headroom("wafer")
    assert room.windows["tokens-minute"].reset_at == pytest.approx(NOW + 3)
    assert room.windows["requests-day"].reset_at == pytest.approx(NOW + 80000)
    assert room.short(10, 1, 0, NOW + 3.1) is None


@pytest.mark.parametrize("headers, blocked_s", [
    (h(x_ratelimit_remaining_tokens_minute="0", x_ratelimit_reset_tokens_minute="12",
       x_ratelimit_remaining_requests_day="5", x_ratelimit_reset_requests_day="80000"), 12.0),   # the window it names
    (h(x_ratelimit_remaining_tokens_minute="900", x_ratelimit_reset_tokens_minute="20",
       x_ratelimit_remaining_requests_day="5", x_ratelimit_reset_requests_day="80000"), 20.0),   # else the shortest
    ([], 1.0),                                                                                     # a bare 429
], ids=["named", "shortest", "bare"])
def test_a_429_without_retry_after_waits_for_the_window_it_names_or_the_shortest(headers, blocked_s):
    learner = HeadroomLearner()
    shared: list[tuple[str, int]] = []
    learner.sink = lambda name, windows, exhausted_ms: shared.append((name, exhausted_ms))
    learner.learn("wafer", 429, headers, now=NOW)
    assert learner.headroom("wafer").exhausted_until == pytest.approx(NOW + blocked_s)
    assert shared == [("wafer", int(blocked_s * 1000))], "the limiter's store gets the same wait"


def test_a_daily_cap_spent_is_visible_to_spill_and_reserve():
    learner = HeadroomLearner()
    learner.learn("wafer", 200, h(x_ratelimit_limit_requests_day="100", x_ratelimit_remaining_requests_day="10",
                                  x_ratelimit_reset_requests_day=str(DAY / 2)), now=NOW)
    room = learner.headroom("wafer")
    assert room.fraction_left(NOW + 3600) == pytest.approx(0.1), "still 10% of the day's cap hours later"
    learner.admitted("wafer", "rpd", "requests", 0, 500, DAY / 3, now=NOW)  # our own configured daily cap
    assert room.short(10, 1, 0, NOW + 3600) == "requests"


def test_sent_requests_debit_provider_windows_only():
    learner = HeadroomLearner()
    learner.learn("wafer", 200, OPENAI, now=NOW)
    learner.admitted("wafer", "tpm", "tokens", 5000, 6000, 30, now=NOW)
    learner.sent("wafer", 400)
    room = learner.headroom("wafer")
    assert (room.windows["requests"].remaining, room.windows["tokens"].remaining) == (28, 58600)
    assert room.windows["tpm"].remaining == 5000, "our own windows are what admission said, not debited twice"
    learner.sent("unknown", 400)
    assert learner.headroom("unknown") is None


def test_the_newest_word_about_a_window_replaces_the_old_one():
    learner = HeadroomLearner()
    learner.learn("wafer", 200, OPENAI, now=NOW)
    learner.learn("wafer", 200, h(x_ratelimit_remaining_requests="3", x_ratelimit_reset_requests="1s"), now=NOW + 1)
    room = learner.headroom("wafer")
    assert room.windows["requests"].remaining == 3 and room.windows["tokens"].remaining == 59000
    learner.learn("other", 200, h(content_type="application/json"))
    assert learner.headroom("other") is None


ROOMY = h(x_ratelimit_limit_requests_day="14400", x_ratelimit_remaining_requests_day="14000",
          x_ratelimit_reset_requests_day="33011.38", x_ratelimit_limit_tokens_minute="60000",
          x_ratelimit_remaining_tokens_minute="50000", x_ratelimit_reset_tokens_minute="30.5")


def cerebras_minute(learner: HeadroomLearner) -> None:
    """30 requests sent a second apart, all admitted; the 31st refused until the first leaves the minute."""
    for i in range(30):
        learner.sent("wafer", 500, now=NOW + i)
        learner.learn("wafer", 200, ROOMY, now=NOW + i + 0.1)
    learner.sent("wafer", 500, now=NOW + 30)
    learner.learn("wafer", 429, [*ROOMY, (b"retry-after-ms", b"30000")], now=NOW + 30.05)


def test_a_429_naming_no_advertised_window_reveals_a_hidden_minute_of_requests():
    """Cerebras advertises a day's requests and a minute's tokens; its 30 a minute shows only in 429s.
    Without the inferred window the lane looked roomy once the 429's wait was over, and only the next
    429 spilled it again: the reserve never saw it running low."""
    learner = HeadroomLearner()
    cerebras_minute(learner)
    room = learner.headroom("wafer")
    assert room.windows[HIDDEN].limit == 30 and room.windows[HIDDEN].remaining == 0
    assert room.short(10, 1, 0, NOW + 59) == "requests"
    learner.sent("wafer", 500, now=NOW + 61.5)  # the first two left the minute at 60 and 61: 29 in it now
    assert room.windows[HIDDEN].remaining == 1 and room.fraction_left(NOW + 61.6) == pytest.approx(1 / 30)
    learner.sent("wafer", 500, now=NOW + 61.7)
    assert room.short(10, 1, 0, NOW + 61.8) == "requests", "spilled before the provider's next 429"


def test_the_hidden_limit_rises_to_what_the_provider_admits():
    learner = HeadroomLearner()
    cerebras_minute(learner)
    for i in range(3):  # the 429 was a momentary refusal: the provider admits more in the same minute
        learner.sent("wafer", 500, now=NOW + 31 + i)
    learner.learn("wafer", 200, ROOMY, now=NOW + 34)
    assert learner.headroom("wafer").windows[HIDDEN].limit == 33


@pytest.mark.parametrize("refusal", [
    [*ROOMY, (b"retry-after", b"1")],                     # a wait unrelated to the minute's oldest request
    [*ROOMY[:4], (b"x-ratelimit-remaining-tokens-minute", b"0"), ROOMY[5], (b"retry-after-ms", b"30000")],  # names tokens
], ids=["other-wait", "names-a-window"])
def test_other_429s_infer_no_hidden_window(refusal):
    learner = HeadroomLearner()
    for i in range(30):
        learner.sent("wafer", 500, now=NOW + i)
        learner.learn("wafer", 200, ROOMY, now=NOW + i + 0.1)
    learner.sent("wafer", 500, now=NOW + 30)
    learner.learn("wafer", 429, refusal, now=NOW + 30.05)
    assert HIDDEN not in learner.headroom("wafer").windows
