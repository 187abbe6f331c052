"""Result tables: SimCSE's one-row-per-model layout (PrettyTable style) and JSON files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from contrasent.core.fileio import atomic_write_text
from contrasent.core.results import own_task_tables
from contrasent.core.results import sts_summary as summary_row
from contrasent.data.senteval import TASKS


def table_caption(results: dict[str, Any]) -> str:
    """What the numbers of :func:`format_table` are."""
    if results["mode"] == "dev":
        return "STS dev: Spearman x100 of cosine similarity (STS-B dev, SICK-R trial)"
    return (
        "STS: Spearman x100 of cosine similarity; STS12-16 'all' (the year's subsets merged), "
        "STS-B and SICK-R test"
    )


def format_table(results: dict[str, Any]) -> str:
    """The SimCSE README table: one column per task (table order) + Avg., Spearman x100."""
    return format_rows([(None, results)])


def render_table(names: Sequence[str], values: Sequence[float | None]) -> str:
    """One-row ASCII table in SimCSE's layout (PrettyTable style), numbers with 2 decimals."""
    return render_rows(names, [(None, values)])


def format_rows(rows: Sequence[tuple[str | None, dict[str, Any]]]) -> str:
    """Several results (e.g. before training and after each stage) as rows of one table; a
    label column when the rows are labelled. Tasks: the union, in table order."""
    summaries = [(label, summary_row(res)) for label, res in rows]
    tasks = {t for _, row in summaries for t in row}
    names = [t for t in TASKS if t in tasks] + ["Avg."]
    return render_rows(names, [(label, [row.get(n) for n in names]) for label, row in summaries])


def render_rows(
    names: Sequence[str],
    rows: Sequence[tuple[str | None, Sequence[float | None]]],
    digits: int = 2,
) -> str:
    """Rows of numbers (``digits`` decimals, "-" when None) under ``names`` in SimCSE's layout
    (PrettyTable style); a label column when any row is labelled."""
    labelled = any(label is not None for label, _ in rows)
    header = ([""] if labelled else []) + list(names)
    body = [
        ([label or ""] if labelled else [])
        + ["-" if v is None else f"{v:.{digits}f}" for v in values]
        for label, values in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) + 2 for i in range(len(header))]
    rule = "+" + "+".join("-" * w for w in widths) + "+"

    def line(values: list[str]) -> str:
        return "|" + "|".join(v.center(w) for v, w in zip(values, widths, strict=True)) + "|"

    return "\n".join([rule, line(header), rule, *[line(b) for b in body], rule])


#: what the numbers of each own-data kind are (their scale: STS files x100, the rest 0-1)
OWN_CAPTIONS = {
    "retrieval": "retrieval (cosine, exact search; trec_eval metrics, graded nDCG)",
    "reranking": "reranking (cosine; MAP, MRR@10, nDCG@10)",
    "pairs": "pair classification (cosine; best accuracy / F1 and their thresholds, AP)",
    "sts": "STS files (Spearman / Pearson x100 of cosine)",
    "clustering": "clustering (V-measure of mini-batch k-means, mean and std over runs)",
}


def format_own_tables(rows: Sequence[tuple[str | None, dict[str, Any]]]) -> str:
    """The own-data tasks of one or more results (e.g. before / after training): one table
    per kind, a row per task (per labelled result), a column per metric. Empty when none."""
    parts = []
    for kind, (names, body) in own_task_tables(list(rows)).items():
        parts.append(f"{OWN_CAPTIONS.get(kind, kind)}:")
        parts.append(render_rows(names, body, digits=2 if kind == "sts" else 4))
    return "\n".join(parts)


def write_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``results`` as JSON atomically (invalid JSON, e.g. NaN, raises before writing)."""
    atomic_write_text(path, json.dumps(results, indent=2, allow_nan=False) + "\n")
