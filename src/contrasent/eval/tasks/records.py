"""Own-data task rows given from Python instead of a file: the rows and values of one task,
checked like a file's lines (one :class:`UserError` naming the task and the row).

Rows come as a list of tuples (positional, in the kind's column order), a list of dicts (by
column name), a dict of columns (``{"sentence1": [...], "sentence2": [...], "score": [...]}``,
what ``datasets.Dataset.from_dict`` takes) or a ``datasets.Dataset`` (by column name).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from contrasent.core.errors import UserError, where


class PythonSource:
    """Where a task given from Python is, for error messages: ``eval task 'NAME'`` and
    ``eval task 'NAME', row N`` (:func:`contrasent.core.errors.where` asks :meth:`at`)."""

    def __init__(self, name: str, part: str = "") -> None:
        self.name, self.part = name, part

    def __str__(self) -> str:
        return f"eval task {self.name!r}{f' ({self.part})' if self.part else ''}"

    def at(self, row: int) -> str:
        return f"{self}, row {row}"

    def of(self, part: str) -> PythonSource:
        """The same task, one of its parts (a retrieval task's ``queries``, ``corpus``, ...)."""
        return PythonSource(self.name, part)


def is_python_data(value: Any) -> bool:
    """Whether ``value`` is rows from Python (not a path to a task file)."""
    return not isinstance(value, (str, os.PathLike))


def rows(data: Any, roles: Sequence[str], source: PythonSource) -> Iterator[tuple[int, list]]:
    """(row number from 1, the values of ``roles`` in that order) for every row of ``data``."""
    names = getattr(data, "column_names", None)
    if names is not None:  # a datasets.Dataset: rows as dicts
        _require(list(names), roles, source, "its columns are")
        for number, row in enumerate(data, 1):
            yield number, [row[r] for r in roles]
        return
    if isinstance(data, Mapping):  # columns: role -> values
        _require(list(data), roles, source, "its columns are")
        lengths = {r: len(data[r]) for r in roles}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{r} {n}" for r, n in lengths.items())
            raise UserError(f"{source}: columns of different lengths ({shown})")
        yield from enumerate((list(v) for v in zip(*(data[r] for r in roles), strict=True)), 1)
        return
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise UserError(
            f"{source}: expected a list of rows, a dict of columns or a datasets.Dataset, "
            f"found {type(data).__name__}"
        )
    for number, row in enumerate(data, 1):
        yield number, _values(row, roles, source, number)


def _values(row: Any, roles: Sequence[str], source: PythonSource, number: int) -> list:
    if isinstance(row, Mapping):
        _require(list(row), roles, source.at(number), "its keys are")
        return [row[r] for r in roles]
    if isinstance(row, (tuple, list)):
        if len(row) != len(roles):
            raise UserError(
                f"{source.at(number)}: expected {len(roles)} values ({', '.join(roles)}), "
                f"found {len(row)}"
            )
        return list(row)
    raise UserError(
        f"{source.at(number)}: expected a tuple ({', '.join(roles)}) or a dict, found "
        f"{type(row).__name__}"
    )


def _require(names: list, roles: Sequence[str], where_: Any, said: str) -> None:
    missing = [r for r in roles if r not in names]
    if missing:
        raise UserError(
            f"{where_}: no {missing[0]!r}; {said} {', '.join(repr(n) for n in names) or 'none'} "
            f"(this kind reads {', '.join(roles)})"
        )


def text(value: Any, source: PythonSource, row: int, what: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where(source, row)}: {what} must be a string, found {value!r:.40}")
    return value


def texts(value: Any, source: PythonSource, row: int, what: str) -> list[str]:
    """A string or a list of strings (as the reranking file takes it)."""
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where(source, row)}: {what} must be a list of strings")
    return list(value)


def number(value: Any, source: PythonSource, row: int, what: str) -> float:
    """A finite real number (int, float, numpy scalar; not a bool, not text)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if real and math.isfinite(float(value)):
        return float(value)
    raise UserError(f"{where(source, row)}: {what} {value!r:.40} is not a number")


def integer(value: Any, source: PythonSource, row: int, what: str) -> int:
    x = number(value, source, row, what)
    if not x.is_integer():
        raise UserError(f"{where(source, row)}: {what} {value!r} must be an integer")
    return int(x)


def binary(value: Any, source: PythonSource, row: int) -> int:
    """A 0/1 label (True/False too, as sentence-transformers' labels may be)."""
    x = int(value) if isinstance(value, bool) else number(value, source, row, "label")
    if x not in (0, 1):
        raise UserError(f"{where(source, row)}: label {value!r} must be 0 or 1")
    return int(x)


def as_task(task: Any, cls: type, read: Any, from_python: Any, name: str) -> Any:
    """``task`` as the kind's task object: itself, read from its path, or built from rows."""
    if isinstance(task, cls):
        return task
    if is_python_data(task):
        return from_python(task, PythonSource(name))
    return read(task)
