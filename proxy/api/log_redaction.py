"""Secrets never reach a log line.

At ``--log-level debug`` the WebSocket handshake is logged header by header (websockets'
``"< %s: %s"``, through uvicorn's logger), which would print every client's proxy key. The
filter sits on the handlers, so it sees every record whichever logger it came from; it travels
in the log config, which uvicorn applies again in every worker it spawns.
"""
from __future__ import annotations

import copy
import logging
import re

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie"})
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)\s+[^\s'\",;]+")
REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    """Blanks the value of a header record (``name: value``) and any ``Bearer``/``Basic`` credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (isinstance(args, tuple) and len(args) == 2 and isinstance(args[0], str)
                and args[0].lower() in SECRET_HEADERS):
            record.args = (args[0], REDACTED)
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it itself
            return True
        if _CREDENTIAL.search(message):
            record.msg, record.args = _CREDENTIAL.sub(rf"\1 {REDACTED}", message), None
        return True


def redacting(config: dict) -> dict:
    """``config`` (a ``logging.config.dictConfig`` dict) with the filter on every handler."""
    config = copy.deepcopy(config)
    config.setdefault("filters", {})["redact_secrets"] = {"()": f"{__name__}.{RedactSecrets.__name__}"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", ()), "redact_secrets"]
    return config
