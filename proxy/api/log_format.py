"""How Laneway's log lines look, the same in the parent process and in every uvicorn worker.

``LANEWAY_LOG_FORMAT=text`` (the default) prints ``time LEVEL logger[pid]: message {fields}``;
``json`` prints one JSON object a line (``time``, ``level``, ``logger``, ``pid``, ``message`` and
the record's fields) for log shippers. The pid tells the workers of one replica apart.
Structured fields ride on a record as ``extra={"fields": {...}}`` (the access log,
proxy.api.access_log, sets them), so both formats carry the same facts.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import orjson

FORMAT_ENV = "LANEWAY_LOG_FORMAT"
FORMATS = ("text", "json")
# uvicorn's own loggers: re-pointed at Laneway's handler so their lines look like ours.
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


class _Formatter(logging.Formatter):
    _second: tuple[int, str] = (-1, "")  # the last whole second and its text: one strftime a second, not a line

    def timestamp(self, created: float) -> str:
        """ISO 8601 UTC with milliseconds: ``2026-12-01T17:00:00.123Z``."""
        second, millis = divmod(int(created * 1000), 1000)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{millis:03d}Z"


class TextFormatter(_Formatter):
    """``2026-12-01T17:00:00.000Z INFO laneway.access[4242]: request {"request_id":...,"status":200,...}``

    A record's fields follow the message as one JSON object: still one line, still machine-readable.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.timestamp(record.created)} {record.levelname} {record.name}[{record.process}]: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + orjson.dumps(fields, default=str).decode()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(_Formatter):
    """One JSON object a line; a record's fields are top-level keys beside time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict for ``fmt`` (one of FORMATS); uvicorn applies it in each worker it spawns."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"laneway": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "laneway", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"handlers": [], "propagate": True} for name in _UVICORN},
    }
