"""What is wrong with a job: :class:`Problem` (where and what) and :class:`JobError` (all of a
job's problems), with the key paths that place a problem (``model.layers[1].units``) and
:data:`SET_ORIGIN` for values that came from ``--set``. Reading and validating report through these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SET_ORIGIN = "--set"


# -- problems -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job: where (a key path such as ``model.layers[1].units``; "" for
    the whole file), what, and the line of the file it is on when known."""

    path: str
    message: str
    line: int | None
    origin: str = ""  # SET_ORIGIN for values that came from --set

    @property
    def location(self) -> str:
        """``fit.epochs (line 12)``, ``fit.epochs (from --set)``, ``line 3`` or ``""``."""
        if self.origin == SET_ORIGIN and self.path:
            return f"{self.path} (from {SET_ORIGIN})"
        if self.path and self.line is not None:
            return f"{self.path} (line {self.line})"
        if self.line is not None:
            return f"line {self.line}"
        return self.path

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class JobError(ValueError):
    """An invalid job. str(err) lists every problem, one per line: '<file>: <key.path> (line N): <message>'."""

    def __init__(self, problems: Sequence[Problem], source: str | None = None):
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(prefix + str(problem) for problem in self.problems)

    def __reduce__(self):  # the default pickles args only, which __init__ cannot take back
        return (type(self), (self.problems, self.source))


# -- where a problem is, and its words -----------------------------------------------------------


def join_key(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def join_item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def parent_path(path: str) -> str:
    """``a.b[2]`` -> ``a.b`` -> ``a`` -> ``""``."""
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path[: path.rfind(".")] if "." in path else ""


def error_text(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
