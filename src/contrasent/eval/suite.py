"""One evaluation over STS and transfer tasks, as SimCSE's ``evaluation.py --task_set``.

``tasks``: ``sts`` (default: the seven STS tasks), ``transfer`` (SimCSE's seven SentEval transfer
tasks), ``full`` (both), or a comma-separated list of task names and aliases from either family.
``mode``: ``dev`` / ``test`` / ``fasttest``; STS has no classifier, so ``fasttest`` means its test
mode there.

The result keeps ``evaluate_sts``'s layout at the top level (``tasks.STS12...``, ``avg``,
``diagnostics``) so STS paths do not move, and puts the transfer result under ``transfer``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from contrasent.core.errors import UserError
from contrasent.data import senteval
from contrasent.eval import sts, tables, transfer
from contrasent.eval.sts import Encode

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


def check_tasks(
    tasks: str | None, mode: str, data_dir: str | os.PathLike | None = None
) -> tuple[list[str] | None, list[str] | None]:
    """``split_tasks`` plus every name checked against ``mode`` and the data folder found
    (UserError on a bad one), so a mistake costs no model loading or encoding."""
    senteval.resolve_data_dir(data_dir)
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    sts_names, transfer_names = split_tasks(tasks)
    if sts_names:
        sts.resolve_tasks(sts_names, "dev" if mode == "dev" else "test")
    if transfer_names:
        transfer.resolve_transfer_tasks(transfer_names)
    return sts_names, transfer_names


def evaluate(
    encode: Encode,
    tasks: str | None = None,
    mode: str = "test",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    progress: Callable[[str], None] | None = None,
    bars: bool = False,
) -> tuple[dict[str, Any], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """Run the selected tasks: (JSON-ready results, STS scores per task for plots).
    ``progress``: the transfer tasks' progress lines; ``bars``: a progress bar while embedding
    each task."""
    sts_names, transfer_names = check_tasks(tasks, mode, data_dir)
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
    return results, scores


def format_tables(results: dict[str, Any]) -> str:
    """The SimCSE tables (STS, then transfer) of an ``evaluate`` result."""
    parts = []
    if "tasks" in results:
        as_sts = results | {"mode": results.get("sts_mode", results["mode"])}
        parts += [f"{tables.table_caption(as_sts)}:", tables.format_table(as_sts)]
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
