"""Errors a user can cause (bad file, bad config, bad model path).

The CLI catches :class:`UserError` and prints its message without a traceback, exit code 2.
Library code raises it for every input a user can get wrong, naming the file and line.
"""

from __future__ import annotations

import math


class UserError(Exception):
    """A mistake in user input: printed as one clear message by the CLI, no traceback.

    ``key`` (optional) is the dotted recipe key the mistake is about, e.g.
    ``objective.temprature``: the CLI then names the recipe file and line it came from.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def where(path: object, line: int | None = None) -> str:
    """Format a `file:line` location for error messages (a location that is not a file, e.g.
    a task given from Python, says itself where a row is: its ``at(line)``)."""
    if line is None:
        return str(path)
    at = getattr(path, "at", None)
    return at(line) if callable(at) else f"{path}:{line}"


def finite_number(text: str, path: object, line: int, what: str) -> float:
    """``text`` (a field of a user's file) as a finite float, else one UserError at file:line
    naming ``what`` it should have been (``gold score``, ``label``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"{where(path, line)}: {what} {text!r} is not a number")
    return value
