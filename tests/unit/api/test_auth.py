"""proxy.api.auth: digests compared in constant time, keys found among colliding buckets, 401s in OpenAI's shape."""
from __future__ import annotations

import hashlib

import pytest

from proxy.api import auth
from proxy.api.auth import ANONYMOUS, Authenticator
from proxy.config import parse_policy
from proxy.api.errors import ProxyError


def policy(mode: str, tokens: list[str]):
    keys = "\n".join(f"  - {{name: k{i}, sha256: {hashlib.sha256(t.encode()).hexdigest()}}}" for i, t in enumerate(tokens))
    return parse_policy(f"""\
version: 1
auth: {mode}
keys:
{keys}
deployments:
  - {{name: d, provider: openai, model: m, base_url: "http://127.0.0.1:1/v1"}}
routes:
  - {{name: r, candidates: [d]}}
""")


def test_each_key_is_found_and_others_refused():
    tokens = [f"lw-key-{i}" for i in range(50)]
    checker = Authenticator(policy("keys", tokens))
    for i, token in enumerate(tokens):
        assert checker.check(b"Bearer " + token.encode()).name == f"k{i}"
    for bad in (b"Bearer lw-key-50", b"Bearer " + hashlib.sha256(b"lw-key-1").hexdigest().encode(), b"Bearer lw-key-1x"):
        with pytest.raises(ProxyError) as caught:
            checker.check(bad)
        assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    with pytest.raises(ProxyError) as caught:
        checker.check(None)
    assert caught.value.code == "missing_api_key"


def test_keys_sharing_a_bucket_are_told_apart(monkeypatch):
    monkeypatch.setattr(auth, "_BUCKET", 0)  # every digest in one bucket: the comparison alone decides
    tokens = ["alpha", "beta", "gamma"]
    checker = Authenticator(policy("keys", tokens))
    assert [checker.check(b"Bearer " + t.encode()).name for t in tokens] == ["k0", "k1", "k2"]
    with pytest.raises(ProxyError):
        checker.check(b"Bearer delta")


def test_open_mode_names_known_keys_and_admits_the_rest():
    checker = Authenticator(policy("open", ["alpha"]))
    assert checker.check(b"bearer alpha").name == "k0"
    assert checker.check(b"Bearer unknown") is ANONYMOUS and checker.check(None) is ANONYMOUS
    assert checker.check(b"Basic alpha") is ANONYMOUS
