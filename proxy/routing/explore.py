"""Probing a demoted lane that no client request reaches, so its recovery is seen anyway.

Routing re-checks a lane its measurements demoted by sending it a real client request now
and then (``strategies._probe``), but only while requests arrive. When traffic stops, the
figures stay as the last requests left them, and the first requests after the pause avoid
a lane that may long have recovered. So while a deployment that is a choice in some route
is demoted (measured at least ``stats.PROBE_WHEN_SLOWER`` times slower than its priors)
and has had no request of any kind for ``learning.idle_probe_s`` (10 s by default, 0: never),
this sends it one probe.

A probe is the cheapest real request: a streamed chat completion of a one-word prompt
with ``max_tokens: 1``, enough to measure a time to first token. It is an ordinary attempt
(``Attempts.try_candidate``): admitted by the rate limiter against the deployment's own limits
(key ``laneway-probe``, which has no client limits of its own), counted in the headroom view
and the breaker. It is not sent while the provider's last word leaves fewer than
``PROBE_MIN_REQUESTS`` requests or too few tokens in any window, while a 429's wait lasts, or
while the breaker is open (its half-open probe is the breaker's own business), so a probe
never takes a lane's last request. Its Outcome goes to the same observers as a client
request: statistics learn from it, the ledger bills it (route ``laneway:probe``), metrics and
the access log show it. Cost: at most one 1-token request per ``idle_probe_s`` per demoted lane
and replica, and none while the lane is healthy or busy.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable

import orjson

from proxy.call import ModelRequest, Outcome, UpstreamError
from proxy.config.schema import Deployment
from proxy.limits.limiter import DeploymentLimited, Limiter
from proxy.routing.router import Router
from proxy.routing.stats import PROBE_WHEN_SLOWER, DeploymentStats
from proxy.upstream.scan import StreamScanner

log = logging.getLogger("laneway.routing")

PROBE_KEY = "laneway-probe"
PROBE_ROUTE = "laneway:probe"
PROBE_MIN_REQUESTS = 2  # a probe leaves at least one request in every window
PROBE_TOKENS = 16       # prompt + output a probe may use, against the headroom view
TICK_S = 1.0


def demoted(dep: Deployment, stats: DeploymentStats, now: float) -> bool:
    """Measured (a short prompt, one token, errors counted) PROBE_WHEN_SLOWER times slower than its priors."""
    priors = dep.priors
    seen = stats.estimate(priors, 1, now=now)
    if not seen.warm:
        return False
    measured = (seen.ttft_ms + 1000.0 / seen.tokens_per_s) * (1.0 + seen.error_rate)
    return measured > PROBE_WHEN_SLOWER * (priors.ttft_ms + 1000.0 / priors.tokens_per_s)


class IdleProber:
    """One per process: every TICK_S, probes the demoted idle lanes of the current policy.

    ``router`` returns the current Router (a reload replaces it); ``finish`` is where every
    finished request goes (ProxyState.finish: statistics, ledger, metrics, access log).
    """

    def __init__(self, router: Callable[[], Router], limiter: Limiter | None,
                 finish: Callable[[Outcome], None]) -> None:
        self.router = router
        self.limiter = limiter
        self.finish = finish
        self._ids = itertools.count()
        self._prefix = f"probe_{os.urandom(4).hex()}_"
        self._task: asyncio.Task | None = None
        self._probes: set[asyncio.Task] = set()

    def due(self, router: Router, now: float) -> list[Deployment]:
        """The deployments to probe now (see the module docstring)."""
        live = router.live
        routed = {name for route in router.policy.routes.values() if len(route.candidates) > 1 for name in route.candidates}
        out = []
        for name in routed:
            dep = router.policy.deployments[name]
            interval = dep.learning.idle_probe_s
            if interval <= 0:
                continue
            stats = live.stats.get(name, dep.learning)
            if stats.in_flight or not stats.probe_due(1, now, interval) or not demoted(dep, stats, now):
                continue
            if not live.breakers.get(name, dep.breaker).allows(now):
                continue
            room = live.headroom.headroom(name)
            if room is not None and room.short(PROBE_TOKENS, PROBE_MIN_REQUESTS, 0, now) is not None:
                continue
            out.append(dep)
        return out

    def tick(self, now: float) -> None:
        """Start a probe for every deployment due one (each marked probed, so it is not started twice)."""
        router = self.router()
        for dep in self.due(router, now):
            router.live.stats.get(dep.name).probed_at = now
            router.live.counters.probes += 1
            task = asyncio.get_running_loop().create_task(self.probe(router, dep))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    async def probe(self, router: Router, dep: Deployment) -> Outcome | None:
        """Send one probe to ``dep`` and hand its Outcome to ``finish``; None if our limits refused it."""
        request_id = self._prefix + str(next(self._ids))
        body = {"model": dep.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1,
                "stream": True, "stream_options": {"include_usage": True}}
        req = ModelRequest.from_body("chat", orjson.dumps(body), body, request_id)
        ticket = self.limiter.borrow(PROBE_KEY, req.input_estimate, 1) if self.limiter is not None else None
        outcome = Outcome(request_id, "chat", PROBE_ROUTE, PROBE_KEY, None, deployment=dep.name,
                          hardware=dep.hardware, reason=f"probe:{dep.name}=idle", stream=True,
                          started=time.perf_counter())
        outcome.upstream_started = outcome.started
        scanner = StreamScanner(outcome.started)
        try:
            response = await router.attempts.try_candidate(dep, req, ticket, None)
            outcome.status = response.status
            if response.status == 200:
                async for chunk in response.iter_body():
                    scanner.feed(chunk)
                outcome.first_token_at = scanner.first_token_at
                outcome.take_usage(scanner.usage_or_estimate(req.input_estimate))
            else:
                await response.read()
        except DeploymentLimited:  # never sent: nothing to learn or bill
            outcome = None
        except UpstreamError as exc:  # try_candidate has counted the failure already
            outcome.deployment, outcome.status, outcome.error_code = None, 502, exc.kind
        finally:
            if ticket is not None:
                self.limiter.give_back(ticket, 0 if outcome is None else outcome.input_tokens + outcome.output_tokens)
        if outcome is not None:
            outcome.finished = time.perf_counter()
            self.finish(outcome)
        return outcome

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick(time.monotonic())
            except Exception:  # a bad tick must not end probing for the life of the process
                log.exception("idle probe tick failed")

    async def aclose(self) -> None:
        for task in [self._task, *self._probes]:
            if task is not None:
                task.cancel()
        self._task = None
