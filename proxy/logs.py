"""How Laneway's log lines look, the same in the parent process and in every uvicorn worker.

``LANEWAY_LOG_FORMAT=text`` (the default) prints ``time LEVEL logger[pid]: message key=value ...``;
``json`` prints one JSON object a line (``time``, ``level``, ``logger``, ``pid``, ``message`` and
the record's fields) for log shippers. The pid tells the workers of one replica apart. Structured fields ride on a record as
``extra={"fields": {...}}``: the access log (proxy.api.access_log) and events such as a
store outage use them, so both formats carry the same facts.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import orjson

FORMAT_ENV = "LANEWAY_LOG_FORMAT"
FORMATS = ("text", "json")
# uvicorn's own loggers: re-pointed at Laneway's handler so their lines look like ours.
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_value(value: object) -> str:
    text = str(value)
    return text if text and " " not in text and '"' not in text and "=" not in text else orjson.dumps(text).decode()


class TextFormatter(logging.Formatter):
    """``2026-12-01T17:00:00.000Z INFO laneway.access[4242]: request route=codex status=200 ...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}[{record.process}]: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items() if value is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line; a record's fields are top-level keys beside time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
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
    """A ``logging.config.dictConfig`` dict; uvicorn applies it in each worker it spawns."""
    if fmt not in FORMATS:
        raise ValueError(f"{FORMAT_ENV} must be one of {', '.join(FORMATS)}, got {fmt!r}")
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"laneway": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "laneway", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"handlers": [], "propagate": True} for name in _UVICORN},
    }
