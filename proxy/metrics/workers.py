"""The multiprocess directory that makes /metrics right across ``laneway serve --workers N``.

With N > 1 every worker writes its samples to memory-mapped files in
``$PROMETHEUS_MULTIPROC_DIR`` (prometheus-client multiprocess mode) and any worker answering
a scrape aggregates all of them. prometheus-client reads the variable once, at import, so
this module must not import it: ``laneway serve`` sets the variable before workers start.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def multiprocess_dir(workers: int) -> Iterator[str | None]:
    """Set up ``$PROMETHEUS_MULTIPROC_DIR`` for a multi-worker server, emptied of a previous run's files.

    A directory the operator named is kept (and emptied at start); one we created is removed
    at exit. A single worker without the variable needs neither.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path and workers <= 1:
        yield None
        return
    created = not path
    if created:
        path = tempfile.mkdtemp(prefix="laneway-metrics-")
    Path(path).mkdir(parents=True, exist_ok=True)
    for stale in Path(path).glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if created:
            shutil.rmtree(path, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)
