"""Which number of an evaluation result a training run selects ``best/`` by (``eval.metric``),
and whether higher is better: names, task-file metrics (``NAME.METRIC``), the held-out loss, and
dotted paths into the result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contrasent.core.errors import UserError
from contrasent.core.options import suggest
from contrasent.eval.tasks import KINDS, TaskSpec, parse_task_specs

#: eval.metric names and the result paths they stand for (a dotted path works too)
METRIC_PATHS = {
    "stsb": "tasks.STSBenchmark.spearman.{split}",
    "sickr": "tasks.SICKRelatedness.spearman.{split}",
    "avg": "avg",
}
VALIDATION_LOSS = "validation_loss"
LOWER_IS_BETTER = (VALIDATION_LOSS,)


def task_specs(tasks: str | Sequence[str] | None) -> list[TaskSpec]:
    """``eval.tasks`` as specs (files checked to exist); [] when unset or empty."""
    return [] if not tasks else parse_task_specs(tasks)


def resolve_metric(
    tasks: str | Sequence[str] | None, metric: str | None, validation: bool = False
) -> str:
    """``eval.metric`` settled against ``eval.tasks``: the default (``stsb``; the first task's
    main metric; ``validation_loss`` when ``tasks`` is empty), a task-file ``NAME`` ->
    ``NAME.<main metric>``; UserError when the metric names nothing that will be evaluated."""
    specs = task_specs(tasks)
    files = {s.name: s for s in specs if s.kind is not None}
    if metric is None:
        if tasks is not None and not specs:  # eval.tasks: [] -- the held-out loss alone
            if not validation:
                raise UserError(
                    "eval.tasks is empty: nothing to evaluate; name task files, or set "
                    "data.validation to select best/ by the held-out validation_loss",
                    "eval.tasks",
                )
            return VALIDATION_LOSS
        first = specs[0] if specs else None
        if first is None or first.kind is None:
            return "stsb"
        return f"{first.name}.{KINDS[first.kind].main_metric}"
    if metric in METRIC_PATHS or metric == VALIDATION_LOSS or metric.startswith("tasks."):
        return metric
    name, _, sub = (
        metric.rpartition(".") if "." in metric and metric not in files else (metric, "", "")
    )
    if name in files:
        kind = KINDS[files[name].kind]
        sub = sub or kind.main_metric
        if sub not in kind.metrics:
            raise UserError(
                f"eval.metric {metric!r}: a {kind.name} task has {', '.join(kind.metrics)}",
                "eval.metric",
            )
        return f"{name}.{sub}"
    valid = [*METRIC_PATHS, VALIDATION_LOSS, *files]
    raise UserError(
        f"eval.metric {metric!r}{suggest(name, valid)}: use {', '.join(METRIC_PATHS)}, "
        f"{VALIDATION_LOSS}, NAME.METRIC of a file in eval.tasks"
        f"{' (' + ', '.join(files) + ')' if files else ''} or a dotted path into the results "
        "(tasks.STSBenchmark.pearson.dev)",
        "eval.metric",
    )


def metric_path(metric: str, mode: str) -> str:
    """The dotted path of ``metric`` in an evaluation result."""
    if metric in METRIC_PATHS:
        return METRIC_PATHS[metric].format(split="dev" if mode == "dev" else "test")
    if metric == VALIDATION_LOSS or metric.startswith("tasks."):
        return metric
    return f"tasks.{metric}"  # NAME.METRIC of a task file


def lookup(results: dict[str, Any], metric: str, mode: str) -> tuple[Any, str | None, str]:
    """Walk ``metric`` into the results: (value, first missing key or None, the dotted path)."""
    path = metric_path(metric, mode)
    value: Any = results
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None, key, path
        value = value[key]
    return value, None, path


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def is_better(value: float, best: float | None, metric: str) -> bool:
    """Does ``value`` beat the best so far (None: nothing yet)?"""
    if best is None:
        return True
    return value > best if higher_is_better(metric) else value < best
