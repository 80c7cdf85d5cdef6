"""Prometheus metrics: families, the per-request observer, sampled snapshots, exposition.

Importing the package loads nothing: prometheus-client chooses single- or multi-process
values once, at import, from ``$PROMETHEUS_MULTIPROC_DIR`` (see ``proxy.metrics.workers``).
"""
