"""The access log: one line per finished request and per WebSocket turn, at INFO on ``laneway.access``.

An observer of the request's ``Outcome`` (``ProxyState.observers``), so it reports exactly
what accounting and metrics saw, at the cost of one dict and one log call per request; at
``--log-level warning`` it costs one level check. It names the key, never the key itself.
Timings are milliseconds from the request's arrival: ``added_ms`` until the upstream was
called (Laneway's own share), ``ttft_ms`` to the first token, ``total_ms`` to the end.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import ClassVar

from proxy.call import Outcome

log = logging.getLogger("laneway.access")
_MESSAGE = ("request", "turn")  # indexed by "is a WebSocket turn"


def access_log(outcome: Outcome) -> None:
    if log.isEnabledFor(logging.INFO):
        record = _record(_MESSAGE[outcome.transport == "websocket"])
        record.fields = fields(outcome)
        log.handle(record)


class _Template:
    """What ``makeRecord`` builds for an access line but for its clock and thread, made once per
    process: LogRecord's constructor derives a dozen attributes (file and module names from a path,
    process and thread names) on every call, a third of the access log's cost. A forked child
    drops it (``os.register_at_fork``) rather than every line asking ``os.getpid()``, a syscall."""

    attributes: ClassVar[dict[str, object] | None] = None

    @classmethod
    def get(cls) -> dict[str, object]:
        if cls.attributes is None:
            record = log.makeRecord(log.name, logging.INFO, __file__, 0, "", None, None)
            cls.attributes = dict(record.__dict__)
        return cls.attributes

    @classmethod
    def forget(cls) -> None:
        cls.attributes = None


os.register_at_fork(after_in_child=_Template.forget)


def _record(message: str) -> logging.LogRecord:
    """The record ``makeRecord`` builds (logger.info() without the caller lookup, a stack walk), at a dict copy's cost."""
    record = logging.LogRecord.__new__(logging.LogRecord)
    attributes = record.__dict__
    attributes.update(_Template.get())
    created = time.time()
    attributes["msg"] = message
    attributes["created"] = created
    attributes["msecs"] = int((created - int(created)) * 1000) + 0.0  # as LogRecord computes them
    attributes["relativeCreated"] = (created - logging._startTime) * 1000
    attributes["thread"] = threading.get_ident()
    attributes["threadName"] = threading.current_thread().name
    if "taskName" in attributes and logging.logAsyncioTasks:  # Python 3.12+
        task = asyncio.current_task()
        attributes["taskName"] = task.get_name() if task is not None else None
    return record


def fields(outcome: Outcome) -> dict[str, object]:
    """The line's fields in a fixed order; None where the request never got that far."""
    started = outcome.started
    return {
        "request_id": outcome.request_id,
        "endpoint": outcome.endpoint,
        "transport": outcome.transport,
        "stream": outcome.stream,
        "route": outcome.route,
        "deployment": outcome.deployment,
        "lane": outcome.hardware,
        "status": outcome.status,
        "reason": outcome.reason or None,
        "error": outcome.error_code,
        "added_ms": _ms(outcome.upstream_started - started) if outcome.upstream_started else None,
        "ttft_ms": _ms(outcome.first_token_at - started) if outcome.first_token_at else None,
        "total_ms": _ms(outcome.finished - started),
        "tokens_in": outcome.input_tokens,
        "tokens_out": outcome.output_tokens,
        "key": outcome.key_name,
        "team": outcome.team,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)
