"""One Target per deployment: the object that turns a ModelRequest into an upstream response."""
from __future__ import annotations

from typing import Protocol

from proxy.config.schema import Deployment
from proxy.upstream.http_pool import UpstreamPools
from proxy.upstream.litellm_adapter import LitellmTarget
from proxy.upstream.openai_compat import OpenAICompatTarget
from proxy.upstream.request import ModelRequest
from proxy.upstream.ws_pool import SocketTarget, socket_pools


class Target(Protocol):
    deployment: Deployment

    def injects_usage(self, req: ModelRequest) -> bool: ...
    async def send(self, req: ModelRequest): ...


def build_target(deployment: Deployment, pools: UpstreamPools) -> Target:
    """OpenAI-compatible providers get raw-byte pass-through; the rest go through litellm."""
    if deployment.openai_compatible:
        http = OpenAICompatTarget(deployment, pools)
        if deployment.websocket:  # Responses turns over persistent upstream sockets, HTTP as fallback
            return SocketTarget(deployment, http, socket_pools(pools).get(deployment))
        return http
    return LitellmTarget(deployment)
