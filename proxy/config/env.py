"""``${NAME}`` / ``${NAME:-default}`` interpolation, and redaction of what it brought in.

Done once at load time against an explicit mapping, so the proxy never reads the
environment on the hot path and tests can pass their own ``env``. Every value taken from
the environment is remembered (value -> ``${NAME}``) so that no diagnostic ever echoes it:
a variable holding a key, set where a provider name was expected, must not end up in
``laneway check`` output, the log or ``GET /admin/policy``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
# A value that is exactly one reference with no default: the only accepted form for secrets.
WHOLE_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
# Shorter values are not secrets, and replacing them would garble messages ("greater than 0").
MIN_REDACTED = 4


class UnsetVariable(LookupError):
    """A ``${NAME}`` without a default names a variable that is not set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def interpolate(text: str, env: Mapping[str, str], taken: MutableMapping[str, str] | None = None) -> str:
    """Replace every reference in ``text``; like the shell, ``:-`` also applies to empty values.

    ``taken`` collects each value read from ``env`` (of MIN_REDACTED characters or more) with
    the reference it replaced; defaults are written in the file, so they are not collected.
    """

    def substitute(match: re.Match[str]) -> str:
        value = env.get(match["name"])
        if value:
            if taken is not None and len(value) >= MIN_REDACTED:
                taken[value] = "${" + match["name"] + "}"
            return value
        if match["default"] is not None:
            return match["default"]
        if value is None:
            raise UnsetVariable(match["name"])
        return value

    return REFERENCE.sub(substitute, text)


def literal_part(text: str) -> str:
    """What the file itself spells out: ``text`` with each reference replaced by its default, if any."""
    return REFERENCE.sub(lambda match: match["default"] or "", text)


def redact(message: str, taken: Mapping[str, str]) -> str:
    """``message`` with every environment value replaced by its ``${NAME}``, longest first."""
    for value in sorted(taken, key=len, reverse=True):
        message = message.replace(value, taken[value])
    return message
