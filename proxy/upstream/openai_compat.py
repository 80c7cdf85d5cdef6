"""Pass-through to OpenAI-compatible providers (OpenAI, Cerebras, Groq, Together, vLLM, ...).

Everything that does not change per request — the request line, Host, credentials,
extra headers — is encoded once per deployment, so a request costs one bytes join.
"""
from __future__ import annotations

from proxy.call import ENDPOINT_PATHS, ModelRequest
from proxy.config.schema import Deployment
from proxy.upstream.body import needs_usage_injection, rewrite_body, wants_continuous_usage
from proxy.upstream.http_pool import Origin, Response, UpstreamPools


class OpenAICompatTarget:
    """Sends ModelRequests to one OpenAI-compatible deployment over pooled keep-alive connections."""

    def __init__(self, deployment: Deployment, pools: UpstreamPools) -> None:
        self.deployment = deployment
        origin = Origin.parse(deployment.base_url)
        self._pool = pools.get(origin, deployment.ca_file)
        self._continuous_usage = deployment.provider == "vllm"  # usage in every chunk: exact even when cancelled
        lines = [b"Host: " + origin.host_header, b"Content-Type: application/json", b"User-Agent: laneway"]
        if deployment.api_key:
            lines.append(b"Authorization: Bearer " + deployment.api_key.encode())
        lines.extend(f"{name}: {value}".encode() for name, value in deployment.headers.items())
        fixed = self._fixed = b"\r\n".join(lines) + b"\r\n"
        self._base_path = origin.base_path
        self._heads = {
            endpoint: f"POST {origin.base_path}{path} HTTP/1.1\r\n".encode() + fixed
            for endpoint, path in ENDPOINT_PATHS.items()
        }

    def injects_usage(self, req: ModelRequest) -> bool:
        """Whether the upstream stream will carry a usage chunk the client did not ask for."""
        return needs_usage_injection(req.endpoint, req.stream, req.client_wants_usage)

    async def send(self, req: ModelRequest, pin: object = None) -> Response:
        """``pin`` is ignored: HTTP has no socket a conversation could continue on."""
        continuous = self._continuous_usage and wants_continuous_usage(req.endpoint, req.stream)
        body = rewrite_body(req.raw, req.body, self.deployment.model, self.injects_usage(req), continuous)
        accept = b"text/event-stream" if req.stream else b"application/json"
        head = b"%sContent-Length: %d\r\nAccept: %s\r\nX-Request-Id: %s\r\n\r\n" % (
            self._heads[req.endpoint], len(body), accept, req.request_id.encode()
        )
        return await self._exchange(head, body)

    async def forward(self, method: str, path: str, request_id: str) -> Response:
        """A bodyless call on an object the provider stores (``GET /responses/{id}``, ``DELETE``,
        ``POST .../cancel``); ``path`` is below the base URL and already checked by the caller."""
        head = b"%s %s%s HTTP/1.1\r\n%sContent-Length: 0\r\nAccept: application/json\r\nX-Request-Id: %s\r\n\r\n" % (
            method.encode(), self._base_path.encode(), path.encode(), self._fixed, request_id.encode())
        return await self._exchange(head, b"")

    async def _exchange(self, head: bytes, body: bytes) -> Response:
        t = self.deployment.timeouts
        return await self._pool.request(head, body, connect_s=t.connect_s, first_byte_s=t.first_byte_s, idle_s=t.idle_s,
                                        total_s=t.total_s)
