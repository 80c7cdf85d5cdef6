"""Client authentication against the policy's hashed proxy keys."""
from __future__ import annotations

import hashlib

from proxy.api.errors import ProxyError
from proxy.config.schema import ApiKey, Policy

ANONYMOUS = ApiKey(name="anonymous", sha256="", team=None)
_CACHE_LIMIT = 10_000


class Authenticator:
    """Maps a bearer token to its ApiKey; hashes each distinct token once.

    The policy holds only SHA-256 digests, so a leaked policy file leaks no keys; the
    in-process cache keeps the hot path to one dict lookup.
    """

    def __init__(self, policy: Policy) -> None:
        self.open = policy.auth == "open"
        self._by_digest = {key.sha256: key for key in policy.keys}
        self._cache: dict[bytes, ApiKey] = {}

    def check(self, authorization: bytes | None) -> ApiKey:
        token = _bearer(authorization)
        if token is not None:
            key = self._cache.get(token)
            if key is not None:
                return key
            key = self._by_digest.get(hashlib.sha256(token).hexdigest())
            if key is not None:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[token] = key
                return key
        if self.open:
            return ANONYMOUS
        if token is None:
            raise ProxyError(
                401,
                "Missing API key. Send it as 'Authorization: Bearer <key>' (the SDK's api_key).",
                code="missing_api_key",
            )
        raise ProxyError(401, "Invalid API key. Ask your Laneway admin for a key.", code="invalid_api_key")


def _bearer(authorization: bytes | None) -> bytes | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token
