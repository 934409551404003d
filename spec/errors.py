"""Errors that point at the YAML: every problem carries a file, a line and a column."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A position in a spec file; `line` and `col` are 1-based, as editors show them."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Problem:
    """One located message."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class SpecError(ValueError):
    """One or more problems in a spec, each at its YAML location.

    Raised with every problem found in a pass, so a user fixes them all in one edit.
    """

    def __init__(self, problems: list[Problem] | Problem):
        given = [problems] if isinstance(problems, Problem) else list(problems)
        # One message per position: a problem inside a block template would otherwise repeat
        # for every use of the block.
        unique = {p.location: p for p in reversed(given)}
        self.problems = sorted(unique.values(), key=lambda p: (p.location.file, p.location.line,
                                                               p.location.col))
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def at(cls, location: Location, message: str) -> SpecError:
        return cls(Problem(location, message))


class DataError(ValueError):
    """Data named by a spec is missing or does not fit the model (bad input: exit code 2)."""


class UsageError(ValueError):
    """A call or command line asks for something that cannot be done as given (bad input: exit
    code 2), e.g. a missing file or options that go together given alone."""
