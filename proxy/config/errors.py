"""Error types for policy loading: every problem carries file, line and field path."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem in a policy file, printed like a compiler diagnostic so editors can jump to it."""

    file: str
    line: int  # 1-based; 0 when the file itself could not be read
    field: str  # e.g. "deployments[1].base_url"; "" for file-level problems
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class PolicyError(Exception):
    """The policy was rejected; ``errors`` lists every problem found, not just the first."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))
