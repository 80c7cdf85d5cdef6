"""One Target per deployment: the object that turns a ModelRequest into an upstream response."""
from __future__ import annotations

from typing import Protocol

from proxy.call import ModelRequest, UpstreamResponse
from proxy.config.schema import Deployment
from proxy.upstream.http_pool import UpstreamPools
from proxy.upstream.litellm_adapter import LitellmTarget
from proxy.upstream.openai_compat import OpenAICompatTarget
from proxy.upstream.ws_pool import SocketPin, SocketPools, SocketTarget


class Target(Protocol):
    deployment: Deployment

    def injects_usage(self, req: ModelRequest) -> bool: ...
    async def send(self, req: ModelRequest, pin: SocketPin | None = None) -> UpstreamResponse:
        """``pin``: the client conversation's upstream socket (only socket targets use it)."""

    async def forward(self, method: str, path: str, request_id: str) -> UpstreamResponse:
        """A bodyless call on an object the provider stores (a response), at ``path`` below the base URL."""


def build_target(deployment: Deployment, pools: UpstreamPools, sockets: SocketPools) -> Target:
    """OpenAI-compatible providers get raw-byte pass-through; the rest go through litellm."""
    if deployment.openai_compatible:
        http = OpenAICompatTarget(deployment, pools)
        if deployment.websocket:  # Responses turns over persistent upstream sockets, HTTP as fallback
            return SocketTarget(deployment, http, sockets.get(deployment))
        return http
    return LitellmTarget(deployment)
