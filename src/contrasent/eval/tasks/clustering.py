"""Clustering on a user's file: a table with header ``text label``.

The embeddings are clustered by sklearn's ``MiniBatchKMeans`` with k = the number of distinct
labels, as MTEB does (``batch_size`` 512, ``n_init=1``, the raw embeddings), once per seed
(``seed``, ``seed + 1``, ...): k-means depends on its start, so one run is a noisy number.
Reported: the V-measure of the clusters against the labels, mean and standard deviation over runs.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.metrics import v_measure_score

from contrasent.core.errors import UserError, where
from contrasent.eval.tasks import records
from contrasent.eval.tasks.files import as_encode, embed_texts, no_rows, read_table, table_has
from contrasent.eval.tasks.kind import TaskKind

COLUMNS = ("text", "label")
METRICS = ("v_measure", "v_measure_std")


@dataclass
class ClusteringTask:
    """Texts with their gold cluster label (any string)."""

    texts: list[str]
    labels: list[str] = field(default_factory=list)


def read_clustering(
    path: str | os.PathLike, columns: Mapping[str, str] | None = None
) -> ClusteringTask:
    path = Path(path)
    task = ClusteringTask([], [])
    for line, (text, label) in read_table(path, COLUMNS, columns):
        _add(task, text, label, path, line)
    return _checked(task, path)


def clustering_from_python(data: Any, source: records.PythonSource) -> ClusteringTask:
    """Rows ``(text, label)``; a label is a string or an integer (MTEB's are integers)."""
    task = ClusteringTask([], [])
    for row, (text, label) in records.rows(data, COLUMNS, source):
        if isinstance(label, numbers.Integral) and not isinstance(label, bool):
            label = str(label)
        _add(
            task,
            records.text(text, source, row, "text"),
            records.text(label, source, row, "label"),
            source,
            row,
        )
    return _checked(task, source)


def _add(task: ClusteringTask, text: str, label: str, source: Any, line: int) -> None:
    if not label.strip():
        raise UserError(f"{where(source, line)}: empty label")
    task.texts.append(text)
    task.labels.append(label.strip())


def _checked(task: ClusteringTask, source: Any) -> ClusteringTask:
    texts, labels, skipped = usable_items(task)
    if not texts:
        raise no_rows(source, "labelled texts", skipped)
    if len(set(labels)) < 2:
        raise UserError(f"{where(source)}: every text has the label {labels[0]!r}; need 2 or more")
    return task


def detect(path: Path) -> bool:
    return table_has(path, COLUMNS)


def usable_items(task: ClusteringTask) -> tuple[list[str], list[str], int]:
    """(texts, labels) of the non-empty texts, and how many empty ones were left out."""
    keep = [i for i, t in enumerate(task.texts) if t.strip()]
    texts, labels = [task.texts[i] for i in keep], [task.labels[i] for i in keep]
    return texts, labels, len(task.texts) - len(keep)


def v_measures(
    emb: np.ndarray, labels: list[str], n_runs: int, seed: int, kmeans_batch_size: int
) -> list[float]:
    """V-measure of one MiniBatchKMeans run per seed."""
    k = len(set(labels))
    scores = []
    for run in range(n_runs):
        model = MiniBatchKMeans(
            n_clusters=k, batch_size=kmeans_batch_size, n_init=1, random_state=seed + run
        )
        scores.append(float(v_measure_score(labels, model.fit_predict(emb))))
    return scores


def evaluate_clustering(
    encode: Any,
    task: ClusteringTask | str | os.PathLike,
    *,
    n_runs: int = 10,
    seed: int = 42,
    kmeans_batch_size: int = 512,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Mean and standard deviation (over ``n_runs`` seeds) of the V-measure, and counts."""
    task = records.as_task(
        task, ClusteringTask, read_clustering, clustering_from_python, "clustering"
    )
    texts, labels, skipped = usable_items(task)
    if len(set(labels)) < 2:  # k-means with k=1 (or 0) has no clusters to compare
        raise UserError("clustering: need non-empty texts with 2 or more distinct labels")
    index, emb = embed_texts(as_encode(encode), texts, batch_size)
    runs = v_measures(emb[[index[t] for t in texts]], labels, n_runs, seed, kmeans_batch_size)
    return {
        "v_measure": float(np.mean(runs)),
        "v_measure_std": float(np.std(runs)),
        "n_texts": len(texts),
        "n_clusters": len(set(labels)),
        "skipped_empty": skipped,
    }


KIND = TaskKind(
    "clustering",
    read_clustering,
    evaluate_clustering,
    METRICS,
    "v_measure",
    detect=detect,
    summary=".tsv/.csv with header text, label",
    from_python=clustering_from_python,
    task_type=ClusteringTask,
)
