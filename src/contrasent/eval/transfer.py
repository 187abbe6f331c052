"""SentEval transfer tasks: a logistic regression on frozen sentence embeddings, SentEval's protocol.

Tasks (SimCSE's transfer set, in its table order): MR, CR, SUBJ, MPQA (nested k-fold CV), SST2
(train/dev/test), TREC (k-fold CV on train, then test), MRPC (sentence pairs, features
``[|u - v|, u * v]``, k-fold CV on train, then test; accuracy and F1), and SICKEntailment by name
(pairs, train/dev/test). Reading: ``contrasent.eval.transfer_data``; classifier and validation:
``contrasent.eval.classifier`` (SentEval's ``MLP(nhid=0)`` and ``validation.py``).

Modes are SimCSE's (``evaluation.py --mode``):

* ``test``: kfold 10, Adam, batch 64, tenacity 5, epoch_size 4; test accuracy reported;
* ``fasttest``: kfold 5, RMSprop, batch 128, tenacity 3, epoch_size 2; test accuracy reported;
* ``dev``: the fasttest classifier, the dev (cross-validation) accuracy reported; the final
  fits that only serve the test numbers are skipped.

Numbers agree with SentEval run on the same embeddings (see ``tests/test_transfer.py`` and the
README for the measured per-task differences).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from contrasent.core.errors import UserError
from contrasent.core.results import transfer_summary as summary_row
from contrasent.data.senteval import resolve_data_dir
from contrasent.eval import classifier as clf
from contrasent.eval import protocols
from contrasent.eval.sts import Encode, embed_unique
from contrasent.eval.transfer_data import SPECS, Split, load_transfer_task

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC")
ALL_TASKS: tuple[str, ...] = (*TASKS, "SICKEntailment")
ALIASES: dict[str, tuple[str, ...]] = {
    "transfer": TASKS,
    "sst": ("SST2",),
    "sst-2": ("SST2",),
    "sick-e": ("SICKEntailment",),
    "sicke": ("SICKEntailment",),
}
MODES = ("dev", "fasttest", "test")

Progress = Callable[[str], None]


def lookup() -> dict[str, tuple[str, ...]]:
    """Lower-cased task names and aliases -> canonical transfer task names."""
    return {t.lower(): (t,) for t in ALL_TASKS} | ALIASES


def resolve_transfer_tasks(tasks: str | Iterable[str] | None) -> list[str]:
    """Canonical task names in table order from names/aliases (case-insensitive, comma lists)."""
    if tasks is None:
        return list(TASKS)
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for name in names for n in name.split(",") if n.strip()]
    table = lookup()
    chosen: set[str] = set()
    for name in names:
        if name.lower() not in table:
            valid = ", ".join([*ALL_TASKS, *ALIASES])
            raise UserError(f"unknown transfer task {name!r}: choose from {valid}")
        chosen.update(table[name.lower()])
    if not chosen:
        raise UserError(f"no transfer task selected by {names!r}")
    return [t for t in ALL_TASKS if t in chosen]


def classifier_config(mode: str) -> clf.ClassifierConfig:
    if mode not in MODES:
        raise UserError(f"unknown transfer mode {mode!r}: choose one of {', '.join(MODES)}")
    return clf.PRESETS[mode]


def _features(split: Split, index: dict[str, int], emb: np.ndarray) -> np.ndarray:
    """Sentence embeddings, or ``[|u - v|, u * v]`` for pairs; float32 as SentEval's batcher
    returns them (SimCSE: a float32 tensor)."""
    u = emb[[index[s] for s in split.texts]]
    if split.texts_b is None:
        return u
    v = emb[[index[s] for s in split.texts_b]]
    return np.concatenate([np.abs(u - v), u * v], axis=1)


def run_task(
    task: str,
    data: dict[str, Split],
    index: dict[str, int],
    emb: np.ndarray,
    cfg: clf.ClassifierConfig,
    with_test: bool = True,
) -> dict[str, Any]:
    """The classifier part of one task on already computed embeddings (``emb`` float32)."""
    spec = SPECS[task]
    names = list(data)
    X = torch.from_numpy(np.concatenate([_features(data[n], index, emb) for n in names]))
    y = torch.from_numpy(np.concatenate([data[n].labels for n in names]))
    sizes = {n: len(data[n]) for n in names}
    out: dict[str, Any] = {"protocol": spec.protocol, "nclasses": spec.nclasses, "n": sizes}
    if spec.protocol == "inner_kfold":
        res = protocols.inner_kfold(X, y, spec.nclasses, cfg, with_test)
        out |= {"kfold": cfg.kfold, "ndev": sizes["all"], "ntest": sizes["all"]}
    elif spec.protocol == "kfold":
        res = protocols.kfold(X, y, sizes["train"], spec.nclasses, cfg, with_test)
        out |= {"kfold": cfg.kfold, "ndev": sizes["train"], "ntest": sizes["test"]}
        pred = res.pop("pred", None)
        if task == "MRPC" and pred is not None:
            from sklearn.metrics import f1_score

            res["f1"] = round(100 * float(f1_score(data["test"].labels, pred)), 2)
    else:
        start = np.cumsum([0, *sizes.values()])
        rows = {n: np.arange(start[i], start[i + 1]) for i, n in enumerate(names)}
        res = protocols.split(X, y, rows, spec.nclasses, cfg, with_test)
        out |= {"kfold": None, "ndev": sizes["dev"], "ntest": sizes["test"]}
    res.setdefault("acc", None)
    return out | res


def evaluate_transfer(
    encode: Encode,
    data_dir: str | os.PathLike | None = None,
    mode: str = "fasttest",
    tasks: str | Iterable[str] | None = None,
    batch_size: int = 128,
    progress: Progress | None = None,
    bars: bool = False,
) -> dict[str, Any]:
    """Evaluate ``encode`` (list of sentences -> [n, dim] array) on SentEval transfer tasks.

    Returns a JSON-ready dict: ``mode``, ``classifier`` (the settings), ``tasks`` (per task:
    ``acc`` (test accuracy x100, None in dev mode), ``devacc``, ``f1`` (MRPC), ``kfold``, sizes,
    the L2 grid scores and chosen L2, per-fold numbers, ``time_s``), and ``avg`` (mean of the
    reported column: ``devacc`` in dev mode, else ``acc``). ``progress`` receives one line per
    step (default: the module logger); ``bars``: a progress bar while embedding each task.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    cfg = classifier_config(mode)
    selected = resolve_transfer_tasks(tasks)
    root = resolve_data_dir(data_dir)
    say = progress or log.info
    # Read everything first so a missing or malformed file fails before any encoding time.
    loaded = {task: load_transfer_task(root, task) for task in selected}
    results: dict[str, Any] = {}
    for n, (task, data) in enumerate(loaded.items(), 1):
        t0 = time.perf_counter()
        index, emb = embed_unique(
            encode,
            (s for split in data.values() for s in split.sentences()),
            batch_size,
            task,
            bars,
        )
        t1 = time.perf_counter()
        say(f"[{n}/{len(loaded)}] {task}: embedded {len(index)} sentences in {t1 - t0:.1f}s")
        res = run_task(task, data, index, emb.astype(np.float32), cfg, with_test=mode != "dev")
        t2 = time.perf_counter()
        res["time_s"] = {"embed": round(t1 - t0, 2), "classifier": round(t2 - t1, 2)}
        results[task] = res
        shown = res["devacc"] if mode == "dev" else res["acc"]
        say(
            f"[{n}/{len(loaded)}] {task}: {'devacc' if mode == 'dev' else 'acc'} {shown:.2f} "
            f"(classifier {t2 - t1:.1f}s, {res['protocol']})"
        )
    column = "devacc" if mode == "dev" else "acc"
    avg = float(np.mean([r[column] for r in results.values()])) if results else None
    return {"mode": mode, "classifier": cfg.to_dict(), "tasks": results, "avg": avg}


def format_table(results: dict[str, Any]) -> str:
    """SimCSE's transfer table: one column per task (table order) + Avg., accuracy x100."""
    from contrasent.eval.tables import render_table

    row = summary_row(results)
    names = [t for t in ALL_TASKS if t in row] + ["Avg."]
    return render_table(names, [row[n] for n in names])
