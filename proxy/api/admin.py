"""GET /admin/policy: which policy this worker runs, how reloads went, what routing has learnt.

With ``auth: keys`` it needs a valid proxy key like any other call. Nothing here is secret:
policy diagnostics never echo key material, and statistics are per deployment name.
"""
from __future__ import annotations

import os
import time

from proxy.api.asgi import Receive, Scope, Send, header, send_error, send_json
from proxy.api.errors import ProxyError
from proxy.api.state import ProxyState


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
        body["routing"] = {
            "counters": routing.counters.as_dict(),
            "breakers": routing.breakers.states(),
            "deployments": routing.stats.snapshot(),
        }
        body["worker_pid"] = os.getpid()  # with --workers N, which worker answered
        body["now"] = time.time()
        await send_json(send, 200, body)
