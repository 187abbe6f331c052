"""The summary number of each task in an evaluation result (the JSON that ``contrasent eval``
writes), read from the result alone: tables, model cards and reports show these.

STS (``evaluate_sts``): Spearman x100 of STS12-16's "all" aggregation and STS-B / SICK-R's test
split (the dev split in dev mode). Transfer (``evaluate_transfer``): test accuracy (dev accuracy
in dev mode). Both rows end with "Avg.", the result's own average.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def sts_summary(results: Mapping[str, Any]) -> dict[str, float | None]:
    """Task -> the Spearman number shown in the table (dev numbers in dev mode), plus "Avg."."""
    dev = results["mode"] == "dev"
    row = {}
    for task, res in results["tasks"].items():
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
