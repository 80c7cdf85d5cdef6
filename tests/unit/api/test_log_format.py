"""Log line formats: text and JSON carry the same facts, one line each, with time, level, logger and pid."""
from __future__ import annotations

import json
import logging
import os
import re

from proxy.api.log_format import JsonFormatter, TextFormatter


def record(fields: dict | None = None, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys
            exc_info = sys.exc_info()
    rec = logging.LogRecord("laneway.access", logging.INFO, __file__, 1, "request %s", ("x",), exc_info)
    rec.created = 1764608400.25  # 2025-12-01T17:00:00.250Z
    if fields is not None:
        rec.fields = fields
    return rec


def test_json_line():
    line = JsonFormatter().format(record({"route": "codex", "status": 200, "ttft_ms": None}))
    assert json.loads(line) == {"time": "2025-12-01T17:00:00.250Z", "level": "INFO", "logger": "laneway.access",
                                "pid": os.getpid(), "message": "request x", "route": "codex", "status": 200, "ttft_ms": None}


def test_text_line_puts_the_fields_after_the_message_as_one_json_object():
    line = TextFormatter().format(record({"route": "codex", "reason": "fallback:a b=429"}))
    prefix = f"2025-12-01T17:00:00.250Z INFO laneway.access[{os.getpid()}]: request x "
    assert line.startswith(prefix) and json.loads(line[len(prefix):]) == {"route": "codex", "reason": "fallback:a b=429"}


def test_exceptions_stay_with_their_line():
    assert json.loads(JsonFormatter().format(record(exc=True)))["exception"].endswith("ValueError: boom")
    text = TextFormatter().format(record(exc=True))
    assert re.match(r"2025-12-01T17:00:00\.250Z INFO laneway\.access\[\d+\]: request x\nTraceback", text)


def test_timestamps_within_and_across_seconds():
    formatter = JsonFormatter()
    stamps = [formatter.timestamp(t) for t in (1764608400.0, 1764608400.999, 1764608401.001)]
    assert stamps == ["2025-12-01T17:00:00.000Z", "2025-12-01T17:00:00.999Z", "2025-12-01T17:00:01.001Z"]
