"""Error types for policy loading: every problem carries file, line and field path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from .env import redact


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem in a policy file, printed like a compiler diagnostic so editors can jump to it."""

    file: str
    line: int  # 1-based; 0 when the file itself could not be read (then printed as 'file: message')
    field: str  # e.g. "deployments[1].base_url"; "" for file-level problems
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def redacted(self, taken: Mapping[str, str]) -> "FieldError":
        """This error with every value that came from the environment shown as its ``${NAME}``."""
        return replace(self, message=redact(self.message, taken)) if taken else self


class PolicyError(Exception):
    """The policy was rejected; ``errors`` lists every problem found, not just the first."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))
