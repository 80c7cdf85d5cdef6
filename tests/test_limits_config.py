"""The policy's `limits:` blocks and `store:` section: defaults, ${VAR} URLs, file:line:field errors."""
from __future__ import annotations

import pytest

from proxy.config import PolicyError, parse_policy
from proxy.config.schema import Limits, StoreSettings
from proxy.limits import Limiter

SHA = "a" * 64

BASE = """\
version: 1
auth: keys
{store}
keys:
  - name: alice
    sha256: {sha}
    {key_limits}
deployments:
  - name: spark
    provider: cerebras
    model: m
    base_url: http://127.0.0.1:9/v1
    {dep_limits}
"""


def policy(store: str = "", key_limits: str = "", dep_limits: str = "", env: dict | None = None):
    return parse_policy(BASE.format(store=store, sha=SHA, key_limits=key_limits, dep_limits=dep_limits), "p.yaml", env or {})


def errors(**parts) -> list[str]:
    with pytest.raises(PolicyError) as info:
        policy(**parts)
    return [str(e) for e in info.value.errors]


def test_limits_and_store_default_to_unlimited_in_memory():
    loaded = policy()
    assert loaded.store == StoreSettings() and loaded.store.redis_url is None
    assert loaded.deployments["spark"].limits is None and loaded.keys[0].limits is None
    assert not Limiter.from_policy(loaded).active  # nothing to enforce: requests skip the limiter


def test_any_subset_of_limits_may_be_set():
    loaded = policy(key_limits="limits: {rpm: 60, concurrency: 4}", dep_limits="limits: {tpm: 60000, rpd: 14400, tpd: 1000000}")
    assert loaded.keys[0].limits == Limits(rpm=60, concurrency=4)
    assert loaded.deployments["spark"].limits == Limits(tpm=60000, rpd=14400, tpd=1000000)
    assert Limiter.from_policy(loaded).active


def test_store_section_reads_redis_url_from_the_environment():
    loaded = policy(store="store: {redis_url: '${REDIS_URL}', on_store_error: fail_closed, replicas: 3, timeout_ms: 20, "
                    "topology: cluster, lease_s: 10}", env={"REDIS_URL": "redis://:secret@10.0.0.5:6379/0"})
    assert loaded.store == StoreSettings("redis://:secret@10.0.0.5:6379/0", "cluster", "fail_closed", 3, 20, 10.0)
    assert "secret" not in repr(loaded.store)


@pytest.mark.parametrize(
    "parts, expected",
    [
        ({"dep_limits": "limits: {rpm: 0}"}, "p.yaml:13: deployments[0].limits.rpm: must be greater than 0"),
        ({"key_limits": "limits: {tpm: lots}"}, "p.yaml:7: keys[0].limits.tpm: expected an integer"),
        ({"key_limits": "limits: {rps: 5}"}, "p.yaml:7: keys[0].limits.rps: unknown key 'rps'"),
        ({"store": "store: {on_store_error: fail_sometimes}"}, "p.yaml:3: store.on_store_error: unknown on_store_error mode"),
        ({"store": "store: {redis_url: 'http://:pw@host/'}"}, "p.yaml:3: store.redis_url: must be a Redis URL"),
        ({"store": "store: {timeout_ms: -5}"}, "p.yaml:3: store.timeout_ms: must be greater than 0"),
        ({"store": "store: {topology: sharded}"}, "p.yaml:3: store.topology: unknown store topology"),
    ],
)
def test_validation_errors_name_file_line_and_field(parts, expected):
    found = errors(**parts)
    assert any(e.startswith(expected) for e in found), found
    assert not any(":pw@" in e for e in found)  # a URL that may carry a password is never echoed
