"""STS evaluation on SentEval's ``data/downstream`` layout: STS12-16, STS-B, SICK-R.

Score of a pair = cosine similarity of its two embeddings (float64); reported numbers are Spearman
and Pearson correlations with the gold scores, x100.

STS12-16 get three aggregations, because papers disagree on which one they report:

* ``all``: concatenate the year's subsets, one correlation (SimCSE, ConSERT, MTEB). Summary number.
* ``wmean``: per-subset correlations weighted by subset size (SentEval's default).
* ``mean``: plain mean of the per-subset correlations.

The data is read by :mod:`contrasent.data.senteval`; tables are :mod:`contrasent.eval.tables`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr

from contrasent.core.errors import UserError
from contrasent.data.senteval import (
    SPLIT_TASKS,
    STS_YEARS,
    TASKS,
    Pairs,
    load_task,
    resolve_data_dir,
)

log = logging.getLogger(__name__)

DEV_TASKS = SPLIT_TASKS  # the only tasks with a dev split
ALIASES: dict[str, tuple[str, ...]] = {
    "sts": TASKS,
    "all": TASKS,
    "sts12-16": tuple(STS_YEARS),
    "stsb": ("STSBenchmark",),
    "sts-b": ("STSBenchmark",),
    "sickr": ("SICKRelatedness",),
    "sick-r": ("SICKRelatedness",),
    "sick": ("SICKRelatedness",),
}
MODES = ("dev", "test")
SUMMARY = {**dict.fromkeys(STS_YEARS, "all"), **dict.fromkeys(SPLIT_TASKS, "test")}

Encode = Callable[[list[str]], Any]


# ----------------------------------------------------------------------------- scoring


def resolve_tasks(tasks: str | Iterable[str] | None, mode: str) -> list[str]:
    """Canonical task names in table order from names/aliases (case-insensitive, comma lists)."""
    if mode not in MODES:
        raise UserError(f"unknown STS mode {mode!r}: choose one of {', '.join(MODES)}")
    default = DEV_TASKS if mode == "dev" else TASKS
    if tasks is None:
        return list(default)
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for name in names for n in name.split(",") if n.strip()]
    lookup = {t.lower(): (t,) for t in TASKS} | ALIASES
    chosen: set[str] = set()
    for name in names:
        key = name.lower()
        if key not in lookup:
            valid = ", ".join([*TASKS, *ALIASES])
            raise UserError(f"unknown STS task {name!r}: choose from {valid}")
        found = lookup[key]
        if mode == "dev":  # aliases shrink to the dev-capable tasks; a named test-only task errs
            if key in ALIASES:
                found = tuple(t for t in found if t in DEV_TASKS)
            elif found[0] not in DEV_TASKS:
                raise UserError(
                    f"{found[0]} has no dev split; dev mode evaluates {', '.join(DEV_TASKS)}"
                )
        chosen.update(found)
    if not chosen:
        raise UserError(f"no STS task selected by {names!r} in {mode} mode")
    return [t for t in TASKS if t in chosen]


def _as_float64(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, maybe on GPU or in bf16
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def embed_unique(
    encode: Encode,
    sentences: Iterable[str],
    batch_size: int,
    label: str = "encode",
    progress: bool = False,
) -> tuple[dict[str, int], np.ndarray]:
    """Embed each distinct sentence once; longest first so padding is small and OOM comes early."""
    from contrasent.core.progress import progress as progress_bar

    uniq = sorted(set(sentences), key=lambda s: (-len(s), s))
    parts = []
    bar = progress_bar(len(uniq), label, "sent", disable=not progress, leave=False)
    for start in range(0, len(uniq), batch_size):
        chunk = uniq[start : start + batch_size]
        emb = _as_float64(encode(chunk))
        if emb.ndim != 2 or emb.shape[0] != len(chunk):
            raise ValueError(
                f"encode returned shape {emb.shape} for {len(chunk)} sentences; "
                "expected (n_sentences, dim)"
            )
        parts.append(emb)
        bar.update(len(chunk))
    bar.close()
    matrix = np.concatenate(parts) if parts else np.zeros((0, 1))
    return {s: i for i, s in enumerate(uniq)}, matrix


def cosine_scores(pairs: Pairs, index: dict[str, int], emb: np.ndarray) -> np.ndarray:
    """Row-wise cosine in float64; a zero vector scores 0 (as sklearn's paired cosine does)."""
    a = emb[[index[s] for s in pairs.s1]]
    b = emb[[index[s] for s in pairs.s2]]
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = na * nb
    dots = np.einsum("ij,ij->i", a, b)
    return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)


def correlations(gold: np.ndarray, pred: np.ndarray) -> tuple[float | None, float | None]:
    """(Spearman, Pearson) x100; None where undefined (fewer than 2 pairs, constant or NaN input)."""
    if len(gold) < 2 or not np.all(np.isfinite(pred)) or np.ptp(gold) == 0 or np.ptp(pred) == 0:
        return None, None
    return 100.0 * float(spearmanr(gold, pred)[0]), 100.0 * float(pearsonr(gold, pred)[0])


def _mean(values: Sequence[float | None], weights: Sequence[float] | None = None) -> float | None:
    if not values or any(v is None for v in values):
        return None
    w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(np.dot(w, np.asarray(values, dtype=np.float64)) / w.sum())


def score_year(data: dict[str, Pairs], preds: dict[str, np.ndarray]) -> dict[str, Any]:
    """STS12-16 result: all / wmean / mean aggregations plus per-subset numbers."""
    subsets, sp, pe, sizes = {}, [], [], []
    for name, pairs in data.items():
        s, p = correlations(pairs.gold, preds[name])
        subsets[name] = {"spearman": s, "pearson": p, "n_pairs": len(pairs.gold)}
        sp.append(s)
        pe.append(p)
        sizes.append(len(pairs.gold))
    s_all, p_all = correlations(
        np.concatenate([p.gold for p in data.values()]), np.concatenate(list(preds.values()))
    )
    return {
        "spearman": {"all": s_all, "wmean": _mean(sp, sizes), "mean": _mean(sp)},
        "pearson": {"all": p_all, "wmean": _mean(pe, sizes), "mean": _mean(pe)},
        "n_pairs": sum(sizes),
        "n_skipped": sum(p.n_skipped for p in data.values()),
        "subsets": subsets,
    }


def score_splits(data: dict[str, Pairs], preds: dict[str, np.ndarray]) -> dict[str, Any]:
    """STS-B / SICK-R result: one correlation per split."""
    out: dict[str, Any] = {"spearman": {}, "pearson": {}, "n_pairs": {}}
    for split, pairs in data.items():
        out["spearman"][split], out["pearson"][split] = correlations(pairs.gold, preds[split])
        out["n_pairs"][split] = len(pairs.gold)
    return out


def evaluate_sts(
    encode: Encode,
    data_dir: str | os.PathLike | None = None,
    mode: str = "test",
    tasks: str | Iterable[str] | None = None,
    batch_size: int = 128,
    progress: bool = False,
    diagnostics: bool = False,
) -> dict[str, Any]:
    """Evaluate ``encode`` (list of sentences -> [n, dim] array) on the STS tasks.

    ``mode="dev"``: STS-B dev + SICK-R trial only (model selection while training).
    ``mode="test"``: every task; STS-B and SICK-R report both test and dev.
    ``batch_size``: sentences per ``encode`` call; ``progress``: a bar per task (sentences/s).
    Returns a JSON-ready dict (see module doc);
    ``avg`` is the mean of the summary Spearman column ("all" for STS12-16, "test" for STS-B and
    SICK-R; the dev numbers in dev mode). An undefined correlation (e.g. a collapsed model giving
    constant scores) is None, and so is ``avg`` then. ``diagnostics``: when STS-B is evaluated,
    add ``diagnostics`` (alignment, uniformity, similarity by gold score on STS-B dev; see
    ``contrasent.eval.diagnostics``) from the embeddings already computed.
    """
    return score_sts(encode, data_dir, mode, tasks, batch_size, progress, diagnostics)[0]


def score_sts(
    encode: Encode,
    data_dir: str | os.PathLike | None = None,
    mode: str = "test",
    tasks: str | Iterable[str] | None = None,
    batch_size: int = 128,
    progress: bool = False,
    diagnostics: bool = False,
) -> tuple[dict[str, Any], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """``evaluate_sts`` plus the scores behind it: task -> subset/split -> (gold, cosine)."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    selected = resolve_tasks(tasks, mode)
    root = resolve_data_dir(data_dir)
    # Read everything first so a missing or malformed file fails before any encoding time.
    loaded = {task: load_task(root, task, mode) for task in selected}
    results: dict[str, Any] = {}
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    diag = None
    for task, data in loaded.items():
        start = time.perf_counter()
        index, emb = embed_unique(
            encode, (s for p in data.values() for s in (*p.s1, *p.s2)), batch_size, task, progress
        )
        preds = {name: cosine_scores(pairs, index, emb) for name, pairs in data.items()}
        scorer = score_year if task in STS_YEARS else score_splits
        results[task] = scorer(data, preds)
        scores[task] = {name: (data[name].gold, preds[name]) for name in data}
        if diagnostics and task == "STSBenchmark":
            from contrasent.eval.diagnostics import sts_diagnostics

            dev = data["dev"]
            diag = sts_diagnostics(dev.s1, dev.s2, dev.gold, preds["dev"], index, emb, "dev")
        log.info("%s: %d sentences in %.1fs", task, len(index), time.perf_counter() - start)
        if results[task].get("n_skipped"):
            log.info("%s: skipped %d pairs with no gold score", task, results[task]["n_skipped"])
    column = {t: ("dev" if mode == "dev" else SUMMARY[t]) for t in results}
    avg = _mean([results[t]["spearman"][column[t]] for t in results])
    out = {"mode": mode, "tasks": results, "avg": avg}
    if diag is not None:
        out["diagnostics"] = diag
    return out, scores
