"""One path for every model call, whichever transport carried it.

An HTTP request and a WebSocket turn are both a ``Call``: a value that carries the request,
the client's key and hints, the rate-limit ticket and budget hold it borrowed, the upstream
socket pin of its conversation and the attempt routing made. Transports build the call and
relay the response; the pipeline does the rest in two steps, like redis-py's
``execute_command`` (acquire, call, release in ``finally``):

    attempt = await pipeline.run(call)     # resolve, borrow ticket + hold, dispatch
    ... the transport relays attempt.response ...
    pipeline.finish(call)                  # give back with actual usage, then observers

``finish`` runs however the call ended (answered, refused, cut off), exactly once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from proxy.api.errors import ProxyError
from proxy.api.ratelimit_http import client_headers
from proxy.api.state import ProxyState, Runtime
from proxy.api.validation import validate
from proxy.call import ModelRequest, Outcome
from proxy.config.schema import ApiKey
from proxy.limits.limiter import Ticket
from proxy.pricing.budgets import Hold
from proxy.routing.attempts import Attempt
from proxy.routing.hints import NO_HINTS, Hints
from proxy.store.base import StoreError
from proxy.upstream.ws_pool import SocketPin

log = logging.getLogger("laneway")


@dataclass(slots=True)
class Call:
    """One model call's state, passed explicitly from stage to stage."""

    runtime: Runtime                  # the policy the call started with, kept across a reload
    outcome: Outcome                  # how it ended: what accounting, metrics and logs read
    hints: Hints = NO_HINTS           # the client's x-laneway-* routing hints
    req: ModelRequest | None = None
    ticket: Ticket | None = None      # rate-limit reservation, given back with actual usage
    hold: Hold | None = None          # budget reservation, reconciled with the actual cost
    pin: SocketPin | None = None      # the upstream socket a WebSocket conversation continues on
    attempt: Attempt | None = None
    response_id: str | None = None    # the stored response the upstream created (Responses API)
    done: bool = False

    def rate_limit_headers(self) -> list[tuple[bytes, bytes]]:
        """The client's own x-ratelimit-* (empty when its key has no limits)."""
        return client_headers(self.ticket.client_windows) if self.ticket is not None else []


class Pipeline:
    """Runs calls against the process state; one per app, shared by both transports."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self._writes: set[asyncio.Task] = set()

    def call(self, endpoint: str, request_id: str, key: ApiKey | None = None, hints: Hints = NO_HINTS,
             transport: str = "http") -> Call:
        """A new call on the current policy; ``key`` None until the transport has authenticated it."""
        outcome = Outcome(request_id, endpoint, route="", key_name="", team=None, transport=transport,
                          started=time.perf_counter())
        call = Call(self.state.runtime, outcome, hints)
        if key is not None:
            self.authenticated(call, key)
        return call

    @staticmethod
    def authenticated(call: Call, key: ApiKey) -> None:
        call.outcome.key_name, call.outcome.team = key.name, key.team

    @staticmethod
    def request(call: Call, body: dict, raw: bytes | None, size: int = 0) -> ModelRequest:
        """The validated request of ``body`` (400 before any quota is spent)."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ProxyError(400, "'model' is required: a route name or a model listed by GET /v1/models.",
                             code="missing_model", param="model")
        validate(call.outcome.endpoint, body)  # from_body, the limits and budgets see only sane values
        call.req = ModelRequest.from_body(call.outcome.endpoint, raw, body, call.outcome.request_id, size)
        return call.req

    async def run(self, call: Call) -> Attempt:
        """Resolve the route, borrow the ticket and the budget hold, dispatch; raises Refused."""
        runtime, req, outcome = call.runtime, call.req, call.outcome
        assert req is not None
        route = runtime.router.resolve(req.model)
        outcome.route, outcome.stream = route.name, req.stream
        if runtime.limiter is not None:
            call.ticket = runtime.limiter.borrow(outcome.key_name, req.input_estimate, req.max_output_tokens)
        if runtime.budgets is not None:
            expected = runtime.router.live.stats.expected_output_tokens(route.name, req.max_output_tokens)
            call.hold = await runtime.budgets.borrow(outcome, route.candidates, req, expected)
        soft = call.hold is not None and call.hold.soft
        owner = await self._owner(req) if req.endpoint == "responses" else None
        attempt = call.attempt = await runtime.router.dispatch(route, req, call.hints, call.ticket, call.pin, soft, owner)
        dep = attempt.deployment
        outcome.deployment, outcome.hardware, outcome.reason = dep.name, dep.hardware, attempt.reason
        outcome.upstream_started = attempt.sent_at
        outcome.status = attempt.response.status
        for lost in attempt.losers:  # hedged attempts that lost the race consumed something too
            lost_outcome = lost.outcome(outcome)
            if runtime.budgets is not None:
                runtime.budgets.finish(lost_outcome, None)
            self.state.finish(lost_outcome)
        return attempt

    def finish(self, call: Call) -> None:
        """Give back what the call borrowed with what it actually used, then tell the observers."""
        if call.done:
            return
        call.done = True
        outcome, runtime = call.outcome, call.runtime
        if not outcome.finished:
            outcome.finished = time.perf_counter()
        if call.ticket is not None:
            runtime.limiter.give_back(call.ticket, outcome.input_tokens + outcome.output_tokens)
        if runtime.budgets is not None:
            runtime.budgets.finish(outcome, call.hold)
        if call.response_id is not None and outcome.status == 200 and call.req.body.get("store") is not False:
            self._spawn(self._remember(call.response_id, outcome.deployment))
        self.state.finish(outcome)

    async def _owner(self, req: ModelRequest) -> str | None:
        """The deployment holding the response this request continues (None: unknown, or none)."""
        previous = req.body.get("previous_response_id")
        if not isinstance(previous, str):
            return None
        try:
            return await self.state.affinity.owner(previous)
        except StoreError as exc:  # routing as if unknown: the provider itself says if it lacks the response
            log.warning("response affinity unavailable (%s); routing %s by policy", exc, req.request_id)
            return None

    async def _remember(self, response_id: str, deployment: str) -> None:
        try:
            await self.state.affinity.remember(response_id, deployment)
        except StoreError as exc:
            log.warning("response affinity not recorded for %s (%s)", response_id, exc)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def refused(self, call: Call, error: ProxyError) -> None:
        """The call ends with ``error`` before any response was relayed."""
        call.outcome.status, call.outcome.error_code = error.status, error.code
        self.finish(call)


def read_hints(headers: list[tuple[bytes, bytes]]) -> Hints:
    """The client's x-laneway-* routing hints; one pass over the headers, nothing built when there are none."""
    lane = max_latency = max_cost = None
    for name, value in headers:
        if name.startswith(b"x-laneway-"):
            if name == b"x-laneway-lane":
                lane = value
            elif name == b"x-laneway-max-latency-ms":
                max_latency = value
            elif name == b"x-laneway-max-cost-usd":
                max_cost = value
    if lane is None and max_latency is None and max_cost is None:
        return NO_HINTS
    return Hints.parse(lane, max_latency, max_cost)
