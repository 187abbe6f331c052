"""STS on a user's file: a table with header ``sentence1 sentence2 score``.

Score of a pair = cosine of its embeddings; reported: Spearman and Pearson x100 against the gold
scores. The embedding, cosine and correlation are the built-in STS evaluation's own functions
(:mod:`contrasent.eval.sts`), so a built-in set written as a file gives the built-in number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import finite_number
from contrasent.data.senteval import Pairs
from contrasent.eval.sts import correlations, cosine_scores, embed_unique
from contrasent.eval.tasks import records
from contrasent.eval.tasks.files import as_encode, no_rows, read_table, table_has
from contrasent.eval.tasks.kind import TaskKind

COLUMNS = ("sentence1", "sentence2", "score")
METRICS = ("spearman", "pearson")


@dataclass
class STSTask:
    """Scored sentence pairs; ``scores`` are the gold similarities (any scale)."""

    sentence1: list[str]
    sentence2: list[str]
    scores: list[float] = field(default_factory=list)


def read_sts_file(path: str | os.PathLike, columns: dict[str, str] | None = None) -> STSTask:
    path = Path(path)
    task = STSTask([], [], [])
    for line, (s1, s2, score) in read_table(path, COLUMNS, columns):
        task.scores.append(finite_number(score.strip(), path, line, "score"))
        task.sentence1.append(s1)
        task.sentence2.append(s2)
    return _checked(task, path)


def sts_from_python(data: Any, source: records.PythonSource) -> STSTask:
    """Rows ``(sentence1, sentence2, score)`` (tuples, dicts, columns or a Dataset)."""
    task = STSTask([], [], [])
    for row, (s1, s2, score) in records.rows(data, COLUMNS, source):
        task.sentence1.append(records.text(s1, source, row, "sentence1"))
        task.sentence2.append(records.text(s2, source, row, "sentence2"))
        task.scores.append(records.number(score, source, row, "score"))
    return _checked(task, source)


def _checked(task: STSTask, source: Any) -> STSTask:
    usable, skipped = usable_pairs(task.sentence1, task.sentence2)
    if not usable:
        raise no_rows(source, "scored pairs", skipped)
    return task


def usable_pairs(s1: list[str], s2: list[str]) -> tuple[list[int], int]:
    """Rows whose two texts are both non-empty, and how many were not (counted, not fatal)."""
    keep = [i for i, (a, b) in enumerate(zip(s1, s2, strict=True)) if a.strip() and b.strip()]
    return keep, len(s1) - len(keep)


def pair_cosines(
    encode: Any, s1: list[str], s2: list[str], batch_size: int
) -> tuple[list[int], int, np.ndarray]:
    """(kept rows, skipped rows, cosine of each kept pair in float64) with each distinct text
    embedded once, exactly as the built-in STS scores its pairs."""
    keep, skipped = usable_pairs(s1, s2)
    pairs = Pairs([s1[i] for i in keep], [s2[i] for i in keep], np.zeros(len(keep)))
    index, emb = embed_unique(as_encode(encode), [*pairs.s1, *pairs.s2], batch_size)
    return keep, skipped, cosine_scores(pairs, index, emb)


def evaluate_sts_file(
    encode: Any, task: STSTask | str | os.PathLike, *, batch_size: int = 128
) -> dict[str, Any]:
    """Spearman and Pearson x100 (None where undefined, e.g. constant scores), pair counts."""
    task = records.as_task(task, STSTask, read_sts_file, sts_from_python, "sts")
    keep, skipped, cosines = pair_cosines(encode, task.sentence1, task.sentence2, batch_size)
    gold = np.asarray([task.scores[i] for i in keep], dtype=np.float64)
    spearman, pearson = correlations(gold, cosines)
    return {
        "spearman": spearman,
        "pearson": pearson,
        "n_pairs": len(keep),
        "skipped_empty": skipped,
    }


def detect(path: Path) -> bool:
    return table_has(path, COLUMNS)


KIND = TaskKind(
    "sts",
    read_sts_file,
    evaluate_sts_file,
    METRICS,
    "spearman",
    detect=detect,
    summary=".tsv/.csv with header sentence1, sentence2, score",
    from_python=sts_from_python,
    task_type=STSTask,
)
