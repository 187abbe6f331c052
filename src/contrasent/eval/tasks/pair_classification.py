"""Pair classification on a user's file: a table with header ``sentence1 sentence2 label`` (0/1).

A pair's score is the cosine of its embeddings (float64, as the built-in STS computes it). Reported
as sentence-transformers' ``BinaryClassificationEvaluator`` reports its cosine numbers: average
precision, the best accuracy and the best F1 over all thresholds (with those thresholds and the
precision / recall at the best F1). A pair is predicted similar when its score >= threshold;
thresholds lie halfway between neighbouring distinct scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from contrasent.core.errors import UserError, where
from contrasent.eval.tasks import records
from contrasent.eval.tasks.files import no_rows, parse_binary, read_table, table_has
from contrasent.eval.tasks.kind import TaskKind
from contrasent.eval.tasks.sts_file import pair_cosines, usable_pairs

COLUMNS = ("sentence1", "sentence2", "label")
METRICS = ("ap", "accuracy", "accuracy_threshold", "f1", "f1_threshold", "precision", "recall")


@dataclass
class PairClassificationTask:
    """Sentence pairs with a 0/1 label (1 = similar / duplicate / paraphrase)."""

    sentence1: list[str]
    sentence2: list[str]
    labels: list[int] = field(default_factory=list)


def read_pair_classification(
    path: str | os.PathLike, columns: dict[str, str] | None = None
) -> PairClassificationTask:
    path = Path(path)
    task = PairClassificationTask([], [], [])
    for line, (s1, s2, label) in read_table(path, COLUMNS, columns):
        task.labels.append(parse_binary(label, path, line))
        task.sentence1.append(s1)
        task.sentence2.append(s2)
    return _checked(task, path)


def pairs_from_python(data: Any, source: records.PythonSource) -> PairClassificationTask:
    """Rows ``(sentence1, sentence2, label)`` with a 0/1 (or bool) label."""
    task = PairClassificationTask([], [], [])
    for row, (s1, s2, label) in records.rows(data, COLUMNS, source):
        task.sentence1.append(records.text(s1, source, row, "sentence1"))
        task.sentence2.append(records.text(s2, source, row, "sentence2"))
        task.labels.append(records.binary(label, source, row))
    return _checked(task, source)


def _checked(task: PairClassificationTask, source: Any) -> PairClassificationTask:
    keep, skipped = usable_pairs(task.sentence1, task.sentence2)
    if not keep:
        raise no_rows(source, "labelled pairs", skipped)
    _check_both_labels([task.labels[i] for i in keep], where(source))
    return task


def _check_both_labels(labels: list[int], source: str) -> None:
    # AP, F1 and a threshold mean nothing with one class; say so before a model loads
    if len(set(labels)) < 2:
        raise UserError(f"{source}: every pair is labelled {labels[0]}; need both 0 and 1")


def detect(path: Path) -> bool:
    return table_has(path, COLUMNS)


def _group_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """Positions of the last row of each run of equal scores: a threshold can only fall between
    distinct scores, so tied pairs are always predicted alike."""
    return np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))


def _threshold(s: np.ndarray, i: int) -> float:
    """Halfway to the next (lower) score; the score itself when last or when the midpoint
    rounds onto the next score (it must not let that group in)."""
    if i == len(s) - 1:
        return float(s[i])
    mid = (s[i] + s[i + 1]) / 2
    return float(s[i] if mid == s[i + 1] else mid)


def best_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(best accuracy, its threshold); the first (highest) threshold wins a tie. The start is
    'every pair dissimilar', with a threshold just above the top score."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    n, n_neg = len(y), int((y == 0).sum())
    best, threshold = n_neg / n, float(np.nextafter(s[0], np.inf))
    ends = _group_ends(s)
    pos_so_far, neg_so_far = np.cumsum(y == 1)[ends], np.cumsum(y == 0)[ends]
    acc = (pos_so_far + (n_neg - neg_so_far)) / n
    j = int(np.argmax(acc))
    if acc[j] > best:
        best, threshold = float(acc[j]), _threshold(s, int(ends[j]))
    return best, threshold


def best_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """(best F1, its precision, its recall, its threshold); the first threshold wins a tie."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    ends = _group_ends(s)
    correct = np.cumsum(y == 1)[ends].astype(np.float64)
    extracted = (ends + 1).astype(np.float64)
    precision = correct / extracted
    recall = correct / max(int((y == 1).sum()), 1)
    with np.errstate(invalid="ignore"):
        f1 = np.where(correct > 0, 2 * precision * recall / (precision + recall), 0.0)
    j = int(np.argmax(f1))
    if f1[j] <= 0:
        return 0.0, 0.0, 0.0, 0.0
    return float(f1[j]), float(precision[j]), float(recall[j]), _threshold(s, int(ends[j]))


def evaluate_pair_classification(
    encode: Any, task: PairClassificationTask | str | os.PathLike, *, batch_size: int = 128
) -> dict[str, Any]:
    """The metrics of ``METRICS`` on cosine scores, plus pair counts."""
    task = records.as_task(
        task, PairClassificationTask, read_pair_classification, pairs_from_python, "pairs"
    )
    keep, skipped, scores = pair_cosines(encode, task.sentence1, task.sentence2, batch_size)
    if not keep:
        raise UserError("pair classification: no pair with two non-empty texts")
    _check_both_labels([task.labels[i] for i in keep], "pair classification")
    labels = np.asarray([task.labels[i] for i in keep], dtype=np.int64)
    acc, acc_threshold = best_accuracy(scores, labels)
    f1, precision, recall, f1_threshold = best_f1(scores, labels)
    return {
        "ap": float(average_precision_score(labels, scores)),
        "accuracy": acc,
        "accuracy_threshold": acc_threshold,
        "f1": f1,
        "f1_threshold": f1_threshold,
        "precision": precision,
        "recall": recall,
        "n_pairs": len(keep),
        "n_positive": int(labels.sum()),
        "skipped_empty": skipped,
    }


KIND = TaskKind(
    "pairs",
    read_pair_classification,
    evaluate_pair_classification,
    METRICS,
    "ap",
    detect=detect,
    summary=".tsv/.csv with header sentence1, sentence2, label",
    from_python=pairs_from_python,
    task_type=PairClassificationTask,
)
