"""Evaluation on the user's own data files: retrieval (BEIR folder), reranking (JSON lines), pair
classification, STS and clustering (tables). A spec names a file (``kind:PATH``, ``name=kind:PATH``
or a bare ``PATH`` whose kind is detected); a bare word is left to the built-in evaluation.
A task given from Python (rows, columns or a ``datasets.Dataset``) is checked like its file and
kept as ``NAME=KIND:memory:<fingerprint>`` (:func:`python_task_specs`, :mod:`.memory`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contrasent.core.errors import UserError, where
from contrasent.eval.tasks import (
    clustering,
    memory,
    pair_classification,
    reranking,
    retrieval,
    sts_file,
)
from contrasent.eval.tasks.files import JSONL_SUFFIXES, TABLE_SUFFIXES, as_encode, stem
from contrasent.eval.tasks.kind import TaskKind
from contrasent.eval.tasks.records import PythonSource

__all__ = [
    "KINDS",
    "TaskKind",
    "TaskSpec",
    "check_tasks",
    "evaluate_task",
    "evaluate_tasks",
    "parse_task_specs",
    "python_task_specs",
    "register_task_kind",
]

_log = logging.getLogger(__name__)


KINDS: dict[str, TaskKind] = {}


def register_task_kind(kind: TaskKind) -> TaskKind:
    """Add a task kind under its name (one name, one kind)."""
    if KINDS.get(kind.name, kind) is not kind:
        raise ValueError(f"task kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


# One module per kind, each defining KIND; adding a kind = a module + one entry here.
for _kind in (
    retrieval.KIND,
    reranking.KIND,
    pair_classification.KIND,
    sts_file.KIND,
    clustering.KIND,
):
    register_task_kind(_kind)


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class TaskSpec:
    """One task to evaluate. ``kind`` None: ``name`` is a built-in task (stsb, sickr, MR, ...)
    for the caller to route to the built-in evaluation; ``path`` is then None."""

    name: str
    kind: str | None = None
    path: Path | None = None
    columns: Mapping[str, str] | None = None
    memory: str | None = None  # memory:<fingerprint>: a task given from Python, not a file


def _relative_hint(path: Path) -> str:
    return "" if path.is_absolute() else f" (relative to {Path.cwd()})"


def _looks_like_path(text: str) -> bool:
    suffixes = (*TABLE_SUFFIXES, *JSONL_SUFFIXES, ".gz", ".json")
    return "/" in text or os.sep in text or text.lower().endswith(suffixes)


def detect_kind(path: Path) -> str:
    """The one kind whose ``detect`` accepts ``path``; UserError when none or several do."""
    found = [k.name for k in KINDS.values() if k.detect(path)]
    if len(found) == 1:
        return found[0]
    expected = "; ".join(f"{k.name}: {k.summary}" for k in KINDS.values())
    what = f"it fits {' and '.join(found)}" if found else f"expected one of ({expected})"
    raise UserError(f"{where(path)}: cannot tell the task kind, {what}; write KIND:{path}")


def parse_task_spec(text: str) -> TaskSpec:
    """``kind:PATH``, ``name=kind:PATH``, ``name=PATH``, ``PATH`` or a built-in task name."""
    text = text.strip()
    name, eq, rest = text.partition("=")
    if not eq or any(c in name for c in ("/", os.sep, ":")):  # an "=" inside a path names nothing
        name, rest = "", text
    name, rest = name.strip(), rest.strip()
    head, colon, tail = rest.partition(":")
    kind = head.strip().lower() if colon else None
    if kind is not None and kind not in KINDS:
        if not Path(rest).exists():  # a colon that is part of an existing path is not a kind
            raise UserError(
                f"task {text!r}: unknown task kind {head!r}; choose from {', '.join(KINDS)}"
            )
        kind, tail = None, rest
    path_text = tail.strip() if kind else rest
    if path_text.startswith(memory.MEMORY_PREFIX):
        if not kind or not name:
            raise UserError(f"task {text!r}: a task from Python is written NAME=KIND:{path_text}")
        memory.lookup(path_text, kind, name)  # its data must be in this process
        return TaskSpec(name, kind, None, memory=path_text)
    if not kind and not name and not _looks_like_path(path_text) and not Path(path_text).exists():
        return TaskSpec(path_text)  # a built-in task name
    path = Path(path_text).expanduser()
    if not path_text or not path.exists():
        raise UserError(f"task {text!r}: no file or folder {path_text!r}{_relative_hint(path)}")
    return TaskSpec(name or stem(path), kind or detect_kind(path), path)


def parse_task_specs(text_or_list: str | Iterable[str]) -> list[TaskSpec]:
    """Specs from a comma-separated string or a list of strings (items may hold commas too)."""
    items = [text_or_list] if isinstance(text_or_list, str) else list(text_or_list)
    specs = [parse_task_spec(p) for item in items for p in item.split(",") if p.strip()]
    seen: dict[str, TaskSpec] = {}
    for spec in specs:
        if spec.name in seen:
            raise UserError(
                f"two tasks named {spec.name!r}: name them, e.g. other={spec.kind}:PATH"
            )
        seen[spec.name] = spec
    return specs


def python_task_specs(tasks: Any) -> list[str]:
    """``eval.tasks`` spec strings from what Python code may pass: a spec string, a list of
    them, or a mapping ``name -> task`` (items of a list may be such mappings too), where a task
    is a file spec (``"KIND:PATH"``, a path), a tuple ``(KIND, data)`` (rows, columns or a
    ``datasets.Dataset``: see each kind's ``from_python``) or a kind's task object. Data from
    Python is checked now (one error naming the task and row) and registered in memory."""
    items = [tasks] if isinstance(tasks, (str, os.PathLike, Mapping)) else list(tasks)
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            out.append(os.fspath(item))
            continue
        for name, value in item.items():
            if not isinstance(name, str) or not name or any(c in name for c in ",=:/ "):
                raise UserError(f"eval task name {name!r}: a word without , = : / or spaces")
            if isinstance(value, (str, os.PathLike)):
                out.append(f"{name}={os.fspath(value)}")
                continue
            kind, task = _python_task(name, value)
            out.append(f"{name}={kind}:{memory.register(kind, task)}")
    return out


def _python_task(name: str, value: Any) -> tuple[str, Any]:
    """(kind name, checked task) for a ``(KIND, data)`` tuple or a task object."""
    for kind in KINDS.values():  # a task object (RetrievalTask, STSTask, ...): by its type
        if kind.task_type is not None and isinstance(value, kind.task_type):
            return kind.name, value
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)):
        raise UserError(
            f"eval task {name!r}: expected (KIND, data) with KIND one of {', '.join(KINDS)}, "
            f"a file spec, or a task object; found {type(value).__name__}"
        )
    kind_name, data = value[0].strip().lower(), value[1]
    kind = KINDS.get(kind_name)
    if kind is None or kind.from_python is None:
        raise UserError(
            f"eval task {name!r}: unknown task kind {value[0]!r}; choose from {', '.join(KINDS)}"
        )
    return kind.name, kind.from_python(data, PythonSource(name))


# ----------------------------------------------------------------------------- evaluating
def check_tasks(specs: Sequence[TaskSpec]) -> dict[str, Any]:
    """Read every file task now (name -> task), so a mistake in any file surfaces before a
    model loads or any encoding time is spent. Built-in specs are not read here."""
    return {s.name: read_spec(s) for s in specs if s.kind is not None}


def read_spec(spec: TaskSpec) -> Any:
    """The task of a file spec, read and checked, or the task given from Python."""
    if spec.memory is not None:
        return memory.lookup(spec.memory, spec.kind, spec.name)
    return KINDS[spec.kind].read(spec.path, spec.columns)


class _Timed:
    """An encode function that adds up the seconds spent inside it."""

    def __init__(self, encode: Callable[[list[str]], Any]) -> None:
        self.encode_fn, self.seconds = encode, 0.0

    def __call__(self, texts: list[str]) -> Any:
        start = time.perf_counter()
        try:
            return self.encode_fn(texts)
        finally:
            self.seconds += time.perf_counter() - start


def evaluate_task(
    spec: TaskSpec, encode: Any, task: Any = None, *, batch_size: int = 128
) -> dict[str, Any]:
    """One file task -> its metrics and counts, plus ``kind``, ``seconds`` (all of it) and
    ``encode_seconds`` (inside ``encode``). ``task``: the already read task, if any."""
    if spec.kind is None:
        raise ValueError(f"{spec.name!r} is a built-in task: evaluate it with contrasent.eval")
    kind = KINDS[spec.kind]
    start = time.perf_counter()
    if task is None:
        task = read_spec(spec)
    timed = _Timed(as_encode(encode))
    result = kind.evaluate(timed, task, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {**result, "kind": kind.name, "seconds": seconds, "encode_seconds": timed.seconds}


def summary_line(name: str, result: Mapping[str, Any]) -> str:
    """``name (kind): main-metric value, counts, time`` for a log."""
    kind = KINDS[result["kind"]]
    value = result.get(kind.main_metric)
    shown = "-" if value is None else f"{value:.4f}"
    counts = ", ".join(
        f"{k} {v}" for k, v in result.items() if k.startswith(("n_", "skipped_")) and v
    )
    return (
        f"{name} ({kind.name}): {kind.main_metric} {shown}; {counts}; "
        f"{result['seconds']:.1f}s ({result['encode_seconds']:.1f}s encoding)"
    )


def evaluate_tasks(
    specs: Sequence[TaskSpec] | str | Iterable[str],
    encode: Any,
    log: Callable[[str], None] | None = None,
    *,
    batch_size: int = 128,
    tasks: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every own-data task in ``specs`` (specs, spec strings, or ``name -> task`` mappings as
    :func:`python_task_specs` takes them): name -> :func:`evaluate_task`'s
    result. All files are read first (``tasks``: already read by :func:`check_tasks`, e.g.
    once for a whole training run); ``log`` (default: this module's logger) gets one line per
    task. Built-in names must be routed by the caller (ValueError here)."""
    specs = [specs] if isinstance(specs, (str, Mapping)) else list(specs)
    if not all(isinstance(s, TaskSpec) for s in specs):
        specs = parse_task_specs(python_task_specs(specs))
    builtin = [s.name for s in specs if s.kind is None]
    if builtin:
        raise ValueError(f"built-in tasks {builtin} go to contrasent.eval, not evaluate_tasks")
    tasks = tasks if tasks is not None else check_tasks(specs)
    log = log or _log.info
    results = {}
    for spec in specs:
        results[spec.name] = evaluate_task(spec, encode, tasks[spec.name], batch_size=batch_size)
        log(summary_line(spec.name, results[spec.name]))
    return results
