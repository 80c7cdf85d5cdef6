"""proxy/routing/attempts.py: the bookkeeping every single upstream attempt does, on each way it can end."""
from __future__ import annotations

import asyncio

import pytest

from proxy.call import ModelRequest, UpstreamError
from proxy.config.loader import parse_policy
from proxy.config.schema import Priors
from proxy.routing.attempts import Attempts
from proxy.routing.live import RoutingState

POLICY = """\
version: 1
auth: open
deployments:
  - {name: lane, provider: openai, model: m, base_url: 'http://127.0.0.1:9/v1', breaker: {failures: 2, cooldown_s: 30}}
routes:
  - {name: r, candidates: [lane]}
"""
RATE_HEADERS = [(b"x-ratelimit-limit-requests", b"100"), (b"x-ratelimit-remaining-requests", b"7"),
                (b"x-ratelimit-reset-requests", b"30s")]


class Answer:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"{}") -> None:
        self.status, self.headers, self.body = status, headers, body
        self.read_calls = 0

    async def read(self) -> bytes:
        self.read_calls += 1
        return self.body

    def release(self) -> None: ...
    def abandon(self) -> bytes: return b""


class FakeTarget:
    """Answers with what the test queues: a response, an UpstreamError, or a wait that gets cancelled."""

    def __init__(self, deployment) -> None:
        self.deployment = deployment
        self.next: object = None
        self.sent = 0

    def injects_usage(self, req: ModelRequest) -> bool:
        return False

    async def send(self, req: ModelRequest, pin=None):
        self.sent += 1
        if isinstance(self.next, BaseException):
            raise self.next
        if self.next == "hang":
            await asyncio.sleep(3600)
        return self.next


class FakeTicket:
    def __init__(self) -> None:
        self.admitted: list[str] = []
        self.released: list[str] = []

    async def admit(self, name: str) -> None:
        self.admitted.append(name)

    def release(self, name: str) -> None:
        self.released.append(name)


@pytest.fixture
def parts():
    policy = parse_policy(POLICY)
    dep = policy.deployments["lane"]
    live = RoutingState()
    target = FakeTarget(dep)
    return dep, live, target, Attempts(live, {"lane": target})


def request() -> ModelRequest:
    body = {"model": "r", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    return ModelRequest.from_body("chat", None, body, "req_a", size=80)


def run(coro):
    return asyncio.run(coro)


def test_a_success_is_admitted_once_learnt_from_and_keeps_its_reservation(parts) -> None:
    dep, live, target, attempts = parts
    target.next = Answer(200, RATE_HEADERS)
    ticket = FakeTicket()
    response = run(attempts.try_candidate(dep, request(), ticket, None))
    assert response is target.next and ticket.admitted == ["lane"] and ticket.released == []
    assert live.stats.get("lane").in_flight == 1   # ends when the relay finishes, not here
    room = live.headroom.headroom("lane")
    assert room is not None and room.requests is not None and room.requests <= 7


@pytest.mark.parametrize("provider, span_s", [("groq", 86_400.0), ("openai", 60.0)])
def test_headers_are_read_in_the_deployments_dialect(provider, span_s) -> None:
    """Groq's ``requests`` window is per day, OpenAI's per minute: the deployment's provider tells them apart."""
    dep = parse_policy(POLICY.replace("provider: openai", f"provider: {provider}")).deployments["lane"]
    live = RoutingState()
    target = FakeTarget(dep)
    target.next = Answer(200, RATE_HEADERS)
    run(Attempts(live, {"lane": target}).try_candidate(dep, request(), None, None))
    assert live.headroom.headroom("lane").windows["requests"].span_s == span_s


def test_an_unreachable_upstream_counts_as_a_failure_and_gives_the_reservation_back(parts) -> None:
    dep, live, target, attempts = parts
    target.next = UpstreamError("connect refused")
    ticket = FakeTicket()
    for _ in range(2):
        with pytest.raises(UpstreamError):
            run(attempts.try_candidate(dep, request(), ticket, None))
    assert ticket.released == ["lane", "lane"]
    assert live.breakers.get("lane", dep.breaker).state == "open"   # two failures open this breaker
    assert live.stats.get("lane").in_flight == 0


def test_a_429_releases_the_reservation_but_does_not_blame_the_deployment(parts) -> None:
    dep, live, target, attempts = parts
    ticket = FakeTicket()
    for _ in range(5):
        target.next = Answer(429, [(b"retry-after", b"2")])
        response = run(attempts.try_candidate(dep, request(), ticket, None))
        assert response.status == 429
    assert ticket.released == ["lane"] * 5
    breaker = live.breakers.get("lane", dep.breaker)
    assert breaker.state == "closed" and breaker.failures == 0


def test_a_5xx_answer_is_a_breaker_failure_and_releases(parts) -> None:
    dep, live, target, attempts = parts
    ticket = FakeTicket()
    target.next = Answer(503, [])
    run(attempts.try_candidate(dep, request(), ticket, None))
    assert ticket.released == ["lane"] and live.breakers.get("lane", dep.breaker).failures == 1


def test_a_cancelled_attempt_is_neither_success_nor_failure_and_releases(parts) -> None:
    dep, live, target, attempts = parts
    target.next = "hang"
    ticket = FakeTicket()

    async def cancel_midway():
        task = asyncio.ensure_future(attempts.try_candidate(dep, request(), ticket, None))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    run(cancel_midway())
    breaker = live.breakers.get("lane", dep.breaker)
    assert ticket.released == ["lane"] and breaker.failures == 0 and breaker.probes == 0


def test_skip_drains_the_error_body_so_the_connection_is_reused(parts) -> None:
    dep, live, _target, attempts = parts
    answer = Answer(429, [])
    live.stats.started("lane")
    run(attempts.skip(dep, answer))
    assert answer.read_calls == 1 and live.stats.get("lane").in_flight == 0


def test_the_attempt_reason_names_every_earlier_failure_and_counts_a_fallback(parts) -> None:
    dep, live, _target, attempts = parts
    first = attempts.attempt(dep, request(), Answer(200, []), "primary", [], 0.0)
    assert first.reason == "primary" and live.counters.fallbacks == 0
    later = attempts.attempt(dep, request(), Answer(200, []), "primary", ["a=429", "b=limited"], 0.0)
    assert later.reason == "fallback:a=429,b=limited" and live.counters.fallbacks == 1


def test_a_stream_still_waiting_for_its_response_headers_bounds_the_lanes_first_token(parts) -> None:
    """The scenario's degraded wafer lane holds back even its headers for 3 s: a wait counted from the
    relay's start saw nothing, and short turns kept going to it."""
    dep, live, target, attempts = parts
    target.next = "hang"
    body = {"model": "r", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": True}
    streamed = ModelRequest.from_body("chat", None, body, "req_s", size=80)

    async def wait_then_look():
        task = asyncio.ensure_future(attempts.try_candidate(dep, streamed, None, None))
        await asyncio.sleep(0.3)
        during = live.stats.get("lane").estimate(Priors(ttft_ms=60, tokens_per_s=1500), 10).ttft_ms
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return during
    during = run(wait_then_look())
    assert during >= 600, "0.3 s without headers where 60 ms is usual: twice the wait"
    assert live.stats.get("lane").awaiting == {}, "an answer (or a cancel) ends the wait"
