"""One evaluation over STS, transfer and own-data tasks, as SimCSE's ``evaluation.py --task_set``.

``tasks``: ``sts`` (default: the seven STS tasks), ``transfer`` (SimCSE's seven SentEval transfer
tasks), ``full`` (both), or a comma-separated list of task names and aliases from either family,
mixed freely with task files (``retrieval:PATH``, ``name=pairs:PATH``, a bare ``PATH``: see
:mod:`contrasent.eval.tasks`), whose results go to ``tasks.<name>`` beside the STS tasks.
``mode``: ``dev`` / ``test`` / ``fasttest``; STS has no classifier, so ``fasttest`` means its test
mode there.

The result keeps ``evaluate_sts``'s layout at the top level (``tasks.STS12...``, ``avg``,
``diagnostics``) so STS paths do not move, and puts the transfer result under ``transfer``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contrasent.core.errors import UserError
from contrasent.data import senteval
from contrasent.eval import sts, tables, transfer
from contrasent.eval.sts import Encode
from contrasent.eval.tasks import TaskSpec, evaluate_tasks, parse_task_specs
from contrasent.eval.tasks import check_tasks as read_task_files

MODES = ("dev", "test", "fasttest")
SETS = {"sts": ("sts", None), "transfer": (None, "transfer"), "full": ("sts", "transfer")}


def split_tasks(tasks: str | None) -> tuple[list[str] | None, list[str] | None]:
    """(STS names or None, transfer names or None) from the ``--tasks`` value."""
    if tasks is None or tasks.strip().lower() in SETS:
        s, t = SETS[(tasks or "sts").strip().lower()]
        return ([s] if s else None), ([t] if t else None)
    sts_names: list[str] = []
    transfer_names: list[str] = []
    sts_lookup = {t.lower() for t in sts.TASKS} | set(sts.ALIASES)
    transfer_lookup = transfer.lookup()
    for name in (n.strip() for n in tasks.split(",")):
        key = name.lower()
        if not name:
            continue
        if key in ("full",):
            sts_names.append("sts")
            transfer_names.append("transfer")
        elif key in transfer_lookup:
            transfer_names.append(name)
        elif key in sts_lookup:
            sts_names.append(name)
        else:
            valid = ", ".join(["sts", "transfer", "full", *sts.TASKS, *transfer.ALL_TASKS])
            raise UserError(f"unknown task {name!r}: choose from {valid}")
    if not sts_names and not transfer_names:
        raise UserError(f"no task selected by --tasks {tasks!r}")
    return sts_names or None, transfer_names or None


@dataclass
class Plan:
    """What ``--tasks`` selects: built-in STS and transfer names, and own-data task files
    (already read and checked: name -> task)."""

    sts: list[str] | None
    transfer: list[str] | None
    own: list[TaskSpec] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)


def split_specs(tasks: str | None) -> tuple[str | None, list[TaskSpec]]:
    """(the built-in names as one comma list, or None when there are none; the task files)."""
    if tasks is None:
        return None, []
    specs = parse_task_specs(tasks)
    if not specs:
        raise UserError(f"no task selected by --tasks {tasks!r}")
    builtin = [s.name for s in specs if s.kind is None]
    own = [s for s in specs if s.kind is not None]
    clash = [s.name for s in own if s.name in sts.TASKS]
    if clash:
        raise UserError(f"task name {clash[0]!r} is a built-in task: name the file, e.g. "
                        f"my{clash[0].lower()}=KIND:PATH")  # fmt: skip
    return (",".join(builtin) if builtin else None), own


def check_tasks(tasks: str | None, mode: str, data_dir: str | os.PathLike | None = None) -> Plan:
    """Every selected task checked (names against ``mode`` and the data folder, task files
    read to the last line), so a mistake costs no model loading or encoding."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    builtin, own = split_specs(tasks)
    files = read_task_files(own)
    if builtin is None and own:
        return Plan(None, None, own, files)
    senteval.resolve_data_dir(data_dir)
    sts_names, transfer_names = split_tasks(builtin)
    if sts_names:
        sts.resolve_tasks(sts_names, "dev" if mode == "dev" else "test")
    if transfer_names:
        transfer.resolve_transfer_tasks(transfer_names)
    return Plan(sts_names, transfer_names, own, files)


def evaluate(
    encode: Encode,
    tasks: str | None = None,
    mode: str = "test",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    progress: Callable[[str], None] | None = None,
    bars: bool = False,
    plan: Plan | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """Run the selected tasks: (JSON-ready results, STS scores per task for plots).
    ``progress``: the transfer tasks' progress lines (and one line per task file); ``bars``: a
    progress bar while embedding each task."""
    plan = plan or check_tasks(tasks, mode, data_dir)  # ``plan``: already checked and read
    sts_names, transfer_names = plan.sts, plan.transfer
    sts_mode = "dev" if mode == "dev" else "test"
    results: dict[str, Any] = {"mode": mode}
    scores: dict[str, Any] = {}
    if sts_names:
        sts_results, scores = sts.score_sts(
            encode, data_dir, sts_mode, sts_names, batch_size, bars, diagnostics=True
        )
        results |= sts_results | {"mode": mode, "sts_mode": sts_mode}
    if transfer_names:
        results["transfer"] = transfer.evaluate_transfer(
            encode, data_dir, mode, transfer_names, batch_size, progress, bars
        )
    if plan.own:
        own = evaluate_own(plan, encode, batch_size, progress)
        results["tasks"] = {**results.get("tasks", {}), **own}
    return results, scores


def evaluate_own(
    plan: Plan, encode: Encode, batch_size: int, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The task files of ``plan`` (read once by :func:`check_tasks`): name -> metrics."""
    return evaluate_tasks(plan.own, encode, progress, batch_size=batch_size, tasks=plan.files)


def format_tables(results: dict[str, Any]) -> str:
    """The SimCSE tables (STS, then transfer) of an ``evaluate`` result."""
    parts = []
    if "avg" in results:  # STS tasks were evaluated
        as_sts = results | {"mode": results.get("sts_mode", results["mode"])}
        parts += [f"{tables.table_caption(as_sts)}:", tables.format_table(as_sts)]
    own = tables.format_own_tables([(None, results)])
    if own:
        parts.append(own)
    if "transfer" in results:
        tr = results["transfer"]
        col = "dev accuracy" if tr["mode"] == "dev" else "test accuracy"
        parts.append(f"Transfer ({tr['mode']}, {col} x100):")
        parts.append(transfer.format_table(tr))
    diag = results.get("diagnostics")
    if diag and diag.get("alignment") is not None:
        parts.append(
            f"alignment {diag['alignment']:.4f}  uniformity {diag['uniformity']:.4f}  "
            f"(STS-B {diag['split']}: {diag['n_positive_pairs']} pairs with gold >= "
            f"{diag['threshold']:g}, {diag['n_sentences']} sentences)"
        )
    return "\n".join(parts)
