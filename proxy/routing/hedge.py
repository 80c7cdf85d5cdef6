"""Hedged dispatch: when the chosen candidate has produced no first token after ``hedge.after_ms``,
start the next candidate too; the first to produce a token wins and the other is cancelled.

Nothing reaches the client until a winner is picked: each attempt's first chunks (up to and
including the first token; the whole body when not streaming) are held and replayed to the
client from the winner, so a candidate that fails before its first token still falls back
like an unhedged request. No hedge starts a candidate routing spilled for quota (short of it,
or keeping a reserve for requests that gain more): the hedge would spend what the spill keeps.
At most one hedge per request; a failure after the hedge started
falls back along the remaining candidates. A cancelled loser is accounted, as its own Outcome
on its own deployment, for what its upstream had sent before the cancel: the usage those bytes
carry (exact for streams from providers that report usage in every chunk, e.g. vLLM's
``continuous_usage_stats``), else the prompt estimate plus one token per output event, marked
estimated; a streamed loser cancelled before the provider answered at all is billed nothing.
A hedge leg that our own limits refuse was never sent: it is not a failure of the route (no
fallback is counted; the reason says ``;hedge-refused``).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from proxy.call import ModelRequest, UpstreamError, UpstreamResponse, Usage
from proxy.config.schema import Deployment
from proxy.limits.limiter import DeploymentLimited, Ticket
from proxy.routing.attempts import Attempt, Attempts, Lost
from proxy.routing.failures import is_failure, no_upstream_error
from proxy.upstream.scan import StreamScanner, extract_usage
from proxy.upstream.ws_pool import SocketPin


@dataclass(slots=True)
class Probe:
    """One attempt while the race is on: its response and the chunks read so far."""

    deployment: Deployment
    sent_at: float
    response: UpstreamResponse | None = None
    chunks: list[bytes] = field(default_factory=list)
    body: AsyncIterator[bytes] | None = None  # the rest of a stream, after the first token
    scanner: StreamScanner | None = None


class Replay:
    """The winner's response: the held chunks first, then the rest of the upstream body."""

    __slots__ = ("status", "headers", "_response", "_chunks", "_rest")

    def __init__(self, probe: Probe) -> None:
        self._response = probe.response
        self.status = probe.response.status
        self.headers = probe.response.headers
        self._chunks = probe.chunks
        self._rest = probe.body

    async def iter_body(self) -> AsyncIterator[bytes]:
        try:
            for chunk in self._chunks:
                yield chunk
            if self._rest is not None:
                async for chunk in self._rest:
                    yield chunk
        finally:
            self._response.release()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_body()])

    def release(self) -> None:
        self._response.release()

    def abandon(self) -> bytes:
        return self._response.abandon()


async def _until_first_token(attempts: Attempts, probe: Probe, req: ModelRequest, ticket: Ticket | None,
                             pin: SocketPin | None) -> Probe:
    response = probe.response = await attempts.try_candidate(probe.deployment, req, ticket, pin)
    if response.status != 200:
        return probe
    try:
        if not req.stream:
            probe.chunks.append(await response.read())
            return probe
        body = probe.body = response.iter_body()
        scanner = probe.scanner = StreamScanner(probe.sent_at)
        while scanner.first_token_at is None:
            try:
                chunk = await body.__anext__()
            except StopAsyncIteration:
                probe.body = None
                break
            probe.chunks.append(chunk)
            scanner.feed(chunk)
    except UpstreamError:  # broke off before its first token: nothing was relayed, so it may fall back
        attempts.live.stats.failed_before_response(probe.deployment.name)
        raise
    return probe


async def _cancel(task: asyncio.Task, probe: Probe, req: ModelRequest) -> Lost:
    task.cancel()
    try:
        await task
    except BaseException:  # cancelled, or failed while being cancelled: either way it is over
        pass
    response = probe.response
    if response is None and req.stream:  # no headers yet: the provider had not taken the stream on
        return Lost(probe.deployment, probe.sent_at, Usage(reported=False), None)
    rest = response.abandon() if response is not None else b""  # aborts the exchange; keeps what had arrived
    scanner = probe.scanner
    if req.stream:
        if scanner is None:
            scanner = StreamScanner(probe.sent_at)
        if rest:
            scanner.feed(rest)
        usage = scanner.usage_or_estimate(req.input_estimate)
    else:  # a whole body that had (partly) arrived says its usage; nothing arrived: the prompt estimate
        usage = extract_usage(b"".join([*probe.chunks, rest])) or Usage(input_tokens=req.input_estimate, reported=False)
    return Lost(probe.deployment, probe.sent_at, usage, scanner.first_token_at if scanner else None)


async def hedged_dispatch(attempts: Attempts, req: ModelRequest, candidates: list[Deployment], chosen: str,
                          after_s: float, ticket: Ticket | None, pin: SocketPin | None,
                          spilled: frozenset[str]) -> Attempt:
    """Race ``candidates`` in order as the module says; ``spilled`` (from ``order_candidates``) are
    never started as the hedge leg, only as a fallback after a failure."""
    counters = attempts.live.counters
    pending: dict[asyncio.Task, Probe] = {}
    failures: list[str] = []
    refused: list[str] = []  # hedge legs our own limits refused: never sent, so not failures of the route
    last_error: UpstreamError | None = None
    next_index = 0
    hedge_task: asyncio.Task | None = None

    def launch() -> asyncio.Task:
        nonlocal next_index
        probe = Probe(candidates[next_index], time.perf_counter())
        next_index += 1
        task = asyncio.ensure_future(_until_first_token(attempts, probe, req, ticket, pin))
        pending[task] = probe
        return task

    launch()
    try:
        while pending:
            can_hedge = (hedge_task is None and next_index < len(candidates)
                         and candidates[next_index].name not in spilled)
            done, _ = await asyncio.wait(pending, timeout=after_s if can_hedge else None,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                counters.hedges_started += 1
                hedge_task = launch()
                continue
            for task in done:
                probe = pending.pop(task)
                name = probe.deployment.name
                try:
                    task.result()
                except UpstreamError as exc:
                    last_error = exc
                    if task is hedge_task and isinstance(exc, DeploymentLimited) and pending:
                        refused.append(f"{name}={exc.kind}")
                    else:
                        failures.append(f"{name}={exc.kind}")
                    continue
                status = probe.response.status
                if is_failure(status) and (pending or next_index < len(candidates)):
                    await attempts.skip(probe.deployment, probe.response)
                    failures.append(f"{name}={status}")
                    continue
                losers = tuple([await _cancel(other, pending[other], req) for other in list(pending)])
                pending.clear()
                if task is hedge_task:
                    counters.hedges_won += 1
                response = Replay(probe) if status == 200 else probe.response
                attempt = attempts.attempt(probe.deployment, req, response, chosen, failures, probe.sent_at)
                if hedge_task is not None and not failures:
                    note = ";hedge-won" if task is hedge_task else ";hedge-refused" if refused else ";hedged"
                    attempt.reason = chosen + note
                attempt.losers = losers
                return attempt
            if not pending and next_index < len(candidates):
                launch()
    finally:
        for task, probe in list(pending.items()):  # the client went away while we waited
            await _cancel(task, probe, req)
    assert last_error is not None
    raise no_upstream_error(last_error, failures + refused)
