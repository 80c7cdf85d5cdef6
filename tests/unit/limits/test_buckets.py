"""proxy.limits.buckets: policy limits become store buckets, one hash tag per scope."""
from __future__ import annotations

from proxy.config.schema import Limits
from proxy.limits.buckets import limit_buckets, provider_bucket
from proxy.store.base import CONCURRENCY, COUNTED, REQUESTS, TOKENS


def shape(buckets):
    return [(b.window, b.kind, b.key, b.limit) for b in buckets]


def test_a_request_window_beside_a_token_window_of_its_span_counts_that_log():
    buckets = limit_buckets("client", "alice", Limits(rpm=60, tpm=1000, rpd=500, concurrency=4), 30_000)
    assert shape(buckets) == [
        ("rpm", COUNTED, "lw:{c:alice}:tpm", 60),   # no log of its own: tpm logs every request
        ("tpm", TOKENS, "lw:{c:alice}:tpm", 1000),
        ("rpd", REQUESTS, "lw:{c:alice}:rpd", 500),  # no tpd: it keeps its own log
        ("concurrency", CONCURRENCY, "lw:{c:alice}:conc", 4),
    ]
    assert buckets[0].amounts_key == buckets[1].amounts_key and buckets[0].tag == buckets[1].tag


def test_per_replica_limits_divide_counted_windows_too_and_never_reach_zero():
    buckets = limit_buckets("deployment", "lane", Limits(rpm=5, tpm=90, rpd=7, tpd=9000), 30_000, replicas=4)
    assert shape(buckets) == [
        ("rpm", COUNTED, "lw:{d:lane}:tpm", 1), ("tpm", TOKENS, "lw:{d:lane}:tpm", 22),
        ("rpd", COUNTED, "lw:{d:lane}:tpd", 1), ("tpd", TOKENS, "lw:{d:lane}:tpd", 2250),
    ]


def test_braces_in_a_name_cannot_move_a_scope_off_its_hash_tag():
    (bucket,) = limit_buckets("client", "a}b{c", Limits(rpm=1), 30_000)
    assert bucket.tag == "{c:a)b(c}" and provider_bucket("x}y").tag == "{d:x)y}"
