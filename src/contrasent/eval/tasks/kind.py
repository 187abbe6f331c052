"""What a kind of task file is: how it is read, detected and scored (one per module)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TaskKind:
    """A registered kind of task file: ``read(path, columns) -> task`` (checks every line),
    ``evaluate(encode, task, batch_size=...) -> {metric: value, "n_...": count, ...}``,
    ``detect(path) -> bool`` (does this file look like this kind?), ``from_python(data,
    source) -> task`` (the same task from rows given in Python, checked like the file)."""

    name: str
    read: Callable[[Path, Mapping[str, str] | None], Any]
    evaluate: Callable[..., dict[str, Any]]
    metrics: tuple[str, ...]
    main_metric: str
    higher_is_better: bool = True
    detect: Callable[[Path], bool] = lambda path: False
    summary: str = ""
    from_python: Callable[[Any, Any], Any] | None = None
    task_type: type | None = None  # what ``read`` returns (a task object passed as itself)
