"""GET /admin/policy: which policy this worker runs, how reloads went, what routing has learnt.

``routing.deployments`` is what this worker measured itself; ``routing.routed`` puts its own
figures beside the other replicas' pooled ones and the blend it routes on (they can differ by
an order of magnitude: a replica that measured 61 ms may route on a fleet figure of 2 s), and
``routing.peers`` says how many replicas those came from and how old their figures are.

With ``auth: keys`` it needs a valid proxy key like any other call. Nothing here is secret:
policy diagnostics never echo key material, and statistics are per deployment name.
"""
from __future__ import annotations

import os
import time

from proxy.api.asgi import Receive, Scope, Send, header, send_error, send_json
from proxy.api.errors import ProxyError
from proxy.api.state import ProxyState
from proxy.routing.stats import routing_view


class PolicyStatus:
    def __init__(self, state: ProxyState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.state.runtime
        try:
            runtime.auth.check(header(scope, b"authorization"))
        except ProxyError as error:
            await send_error(send, error)
            return
        policy = runtime.policy
        reloader = self.state.reloader
        body: dict[str, object] = (
            reloader.status() if reloader is not None
            else {"version": policy.version, "source": policy.source, "loaded_at": None, "reloads": None, "last_error": None}
        )
        routing = self.state.routing
        now = time.time()
        body["routing"] = {
            "counters": routing.counters.as_dict(),
            "breakers": routing.breakers.states(),
            "deployments": routing.stats.snapshot(),
            "routed": routing_view(routing.stats, {name: dep.priors for name, dep in policy.deployments.items()}),
            "peers": self._peers(now),
        }
        body["worker_pid"] = os.getpid()  # with --workers N, which worker answered
        body["now"] = now
        await send_json(send, 200, body)

    def _peers(self, now: float) -> dict[str, object]:
        """Replicas whose figures were merged on the last sync, and how old those figures are."""
        sharing = self.state.sharing
        if sharing is None:
            return {"shared": False, "replicas": 0, "synced_age_s": None, "oldest_figures_age_s": None}
        return {"shared": True, "replicas": sharing.peers, "synced_age_s": _age(sharing.merged_at, now),
                "oldest_figures_age_s": _age(sharing.oldest_peer_at, now)}


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else round(now - at, 1)
