"""The summary number of each task in an evaluation result (the JSON that ``contrasent eval``
writes), read from the result alone: tables, model cards and reports show these.

STS (``evaluate_sts``): Spearman x100 of STS12-16's "all" aggregation and STS-B / SICK-R's test
split (the dev split in dev mode). Transfer (``evaluate_transfer``): test accuracy (dev accuracy
in dev mode). Both rows end with "Avg.", the result's own average. Tasks on the user's own files
(``contrasent.eval.tasks``) sit beside the STS tasks under ``tasks.<name>``, marked by their
``kind``; their metrics are every number that is not a count or a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def sts_summary(results: Mapping[str, Any]) -> dict[str, float | None]:
    """Task -> the Spearman number shown in the table (dev numbers in dev mode), plus "Avg."."""
    dev = results["mode"] == "dev"
    row = {}
    for task, res in results["tasks"].items():
        if "kind" in res:  # a task on the user's own file: see own_tasks
            continue
        column = "dev" if dev else "all" if "all" in res["spearman"] else "test"
        row[task] = res["spearman"][column]
    row["Avg."] = results["avg"]
    return row


def transfer_summary(results: Mapping[str, Any]) -> dict[str, float | None]:
    """Task -> the accuracy shown in the table (devacc in dev mode), plus "Avg."."""
    column = "devacc" if results["mode"] == "dev" else "acc"
    row = {task: res[column] for task, res in results["tasks"].items()}
    row["Avg."] = results["avg"]
    return row


#: keys of an own-data task result that are not metrics
_NOT_METRICS = ("kind", "seconds", "encode_seconds")
_COUNT_PREFIXES = ("n_", "skipped_", "replaced_")


def task_metrics(result: Mapping[str, Any]) -> dict[str, float | None]:
    """The metrics of one own-data task result, in its order (counts and times left out)."""
    return {
        k: v
        for k, v in result.items()
        if k not in _NOT_METRICS
        and not k.startswith(_COUNT_PREFIXES)
        and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
    }


def own_tasks(results: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """Name -> result of every own-data task in an evaluation result (empty when none)."""
    tasks = (results or {}).get("tasks") or {}
    return {name: res for name, res in tasks.items() if isinstance(res, Mapping) and "kind" in res}


def own_task_tables(
    rows: list[tuple[str | None, Mapping[str, Any]]],
) -> dict[str, tuple[list[str], list[tuple[str, list[float | None]]]]]:
    """Own-data tasks of several results (label, results), one table per kind:
    kind -> (metric names, [(row label, values)]); a row per task (and per labelled result)."""
    tables: dict[str, tuple[list[str], list[tuple[str, list[float | None]]]]] = {}
    for label, results in rows:
        for name, res in own_tasks(results).items():
            metrics = task_metrics(res)
            names, body = tables.setdefault(res["kind"], (list(metrics), []))
            row_label = f"{name} ({label})" if label else name
            body.append((row_label, [metrics.get(m) for m in names]))
    return tables
