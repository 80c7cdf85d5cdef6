"""Client authentication against the policy's hashed proxy keys."""
from __future__ import annotations

import hashlib
import hmac

from proxy.api.errors import ProxyError
from proxy.config.schema import ApiKey, Policy

ANONYMOUS = ApiKey(name="anonymous", sha256="", team=None)
_BUCKET = 4  # leading digest bytes that pick the candidates: never the whole digest, never the token


class Authenticator:
    """Maps a bearer token to its ApiKey by comparing SHA-256 digests in constant time.

    The policy holds only digests, so a leaked policy file leaks no keys. The token is never a
    dict key (a probe on it is an early-out comparison of a secret); its digest's first bytes
    pick the few candidate keys and ``hmac.compare_digest`` checks each whole digest: one hash
    and, in practice, one comparison a request.
    """

    def __init__(self, policy: Policy) -> None:
        self.open = policy.auth == "open"
        self._buckets: dict[bytes, tuple[tuple[bytes, ApiKey], ...]] = {}
        for key in policy.keys:
            digest = bytes.fromhex(key.sha256)
            self._buckets[digest[:_BUCKET]] = (*self._buckets.get(digest[:_BUCKET], ()), (digest, key))

    def check(self, authorization: bytes | None) -> ApiKey:
        token = _bearer(authorization)
        if token is not None and self._buckets:  # no keys (open auth): no digest to compare with
            digest = hashlib.sha256(token).digest()
            found = None
            for candidate, key in self._buckets.get(digest[:_BUCKET], ()):
                if hmac.compare_digest(digest, candidate):
                    found = key
            if found is not None:
                return found
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
