"""``${NAME}`` / ``${NAME:-default}`` interpolation.

Done once at load time against an explicit mapping, so the proxy never reads the
environment on the hot path and tests can pass their own ``env``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
# A value that is exactly one reference with no default: the only accepted form for secrets.
WHOLE_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


class UnsetVariable(LookupError):
    """A ``${NAME}`` without a default names a variable that is not set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Replace every reference in ``text``; like the shell, ``:-`` also applies to empty values."""

    def substitute(match: re.Match[str]) -> str:
        value = env.get(match["name"])
        if value:
            return value
        if match["default"] is not None:
            return match["default"]
        if value is None:
            raise UnsetVariable(match["name"])
        return value

    return REFERENCE.sub(substitute, text)
