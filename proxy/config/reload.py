"""Reload the policy file while the proxy runs: on change (polled mtime) and on SIGHUP.

A new file is validated completely before anything changes; only a valid policy is handed
to ``apply`` (which swaps the whole runtime in one assignment, so requests in flight keep
the policy they started with). A bad file leaves the running policy alone and is kept as
``last_error`` with its file:line:field diagnostics for ``GET /admin/policy`` and the log.

Every worker process runs its own reloader: each polls the file, and each handles SIGHUP
sent to it. (Under ``laneway serve --workers N`` a SIGHUP to the parent process makes
uvicorn replace the workers one by one; each new worker loads the current file, and if it
is invalid the new worker fails to start and uvicorn keeps the old one.)
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import PolicyError
from .loader import load_policy
from .schema import Policy

log = logging.getLogger("laneway.reload")


@dataclass(frozen=True, slots=True)
class ReloadError:
    """Why the last reload was refused; ``errors`` are 'file:line: field: message' lines."""

    at: float        # unix time
    trigger: str     # "file" | "sighup" | "manual"
    errors: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"at": self.at, "trigger": self.trigger, "errors": list(self.errors)}


class PolicyReloader:
    """Watches one policy file for this process and swaps in each valid new version."""

    def __init__(self, policy: Policy, apply: Callable[[Policy], None], interval_s: float = 0.5) -> None:
        """``interval_s`` between file checks; 0 leaves reloading to SIGHUP alone."""
        self.path = policy.source
        self.apply = apply
        self.interval_s = interval_s
        self.version = policy.version
        self.loaded_at = time.time()
        self.last_error: ReloadError | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        self._signature = _signature(self.path)
        self._task: asyncio.Task | None = None
        self._sighup = False

    def reload(self, trigger: str = "manual") -> bool:
        """Validate the file and swap it in; False (old policy kept, error recorded) if it is invalid."""
        self._signature = _signature(self.path)
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self.reloads_failed += 1
            self.last_error = ReloadError(time.time(), trigger, tuple(str(e) for e in exc.errors))
            for error in exc.errors:
                log.error("policy reload (%s) rejected, keeping version %s: %s", trigger, self.version, error)
            return False
        self.apply(policy)
        self.reloads_ok += 1
        self.loaded_at = time.time()
        previous, self.version = self.version, policy.version
        for warning in policy.warnings:
            log.warning("%s", warning)
        log.info("policy reloaded (%s): %s version %s -> %s", trigger, self.path, previous, policy.version)
        return True

    def changed(self) -> bool:
        """The file was rewritten, replaced or touched (a file missing mid-save is not a change yet)."""
        signature = _signature(self.path)
        return signature is not None and signature != self._signature

    def start(self) -> None:
        """Poll in the background and, in the main thread of a process, answer SIGHUP."""
        loop = asyncio.get_running_loop()
        if self.interval_s > 0:
            self._task = loop.create_task(self._watch())
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False

    def _on_sighup(self) -> None:
        self.reload("sighup")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if self.changed():
                    self.reload("file")
            except Exception:  # the watcher must outlive any surprise; the next change retries
                log.exception("policy watcher failed while checking %s", self.path)

    def status(self) -> dict[str, object]:
        return {
            "version": self.version,
            "source": self.path,
            "loaded_at": self.loaded_at,
            "reloads": {"ok": self.reloads_ok, "failed": self.reloads_failed},
            "last_error": None if self.last_error is None else self.last_error.as_dict(),
        }


def _signature(path: str) -> tuple[int, int, int] | None:
    """What changes when the file is rewritten, replaced (rename) or touched; None while it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
