"""Render /metrics: this process's families, or every worker's in multiprocess mode."""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from proxy.metrics.families import REGISTRY
from proxy.metrics.workers import MULTIPROC_ENV

CONTENT_TYPE = CONTENT_TYPE_LATEST


def render() -> bytes:
    """The text exposition of every family: this process's, or all workers' in multiprocess mode."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    return generate_latest(registry)


def worker_exiting() -> None:
    """Drop this worker's live gauges (open WebSockets, breaker states) from the aggregate."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        multiprocess.mark_process_dead(os.getpid(), path)
