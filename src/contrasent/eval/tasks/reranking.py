"""Reranking on a user's file: JSON lines ``{"query": str, "positive": [str], "negative": [str]}``.

Each query's candidates (its positives and negatives) are ranked by cosine similarity. Metrics are
sentence-transformers' ``RerankingEvaluator``'s: ``map`` = mean of sklearn's
``average_precision_score`` over all candidates, ``mrr@10`` and ``ndcg@10`` (sklearn's
``ndcg_score``, which averages the gains of tied scores). Like that evaluator, a query without a
positive or without a negative is left out; here it is counted. Where scores tie exactly (e.g.
the same text among positives and negatives), MRR sees the candidates in file order, positives
first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, ndcg_score

from contrasent.core.errors import UserError, where
from contrasent.eval.tasks import records
from contrasent.eval.tasks.files import (
    as_encode,
    embed_texts,
    json_value,
    jsonl_has,
    no_rows,
    read_jsonl,
)
from contrasent.eval.tasks.kind import TaskKind
from contrasent.model.similarity import normalize_rows

KEYS = ("query", "positive", "negative")
METRICS = ("map", "mrr@10", "ndcg@10")


@dataclass
class RerankingSample:
    query: str
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)


@dataclass
class RerankingTask:
    samples: list[RerankingSample] = field(default_factory=list)


def _texts(obj: Mapping[str, Any], key: str, path: Path, line: int) -> list[str]:
    """A string or a list of strings (sentence-transformers accepts a lone string too)."""
    value = json_value(obj, key, path, line, (list, str))
    value = [value] if isinstance(value, str) else value
    if not all(isinstance(v, str) for v in value):
        raise UserError(f"{where(path, line)}: {key!r} must be a list of strings")
    return value


def read_reranking(
    path: str | os.PathLike, columns: Mapping[str, str] | None = None
) -> RerankingTask:
    """``columns`` maps the roles query/positive/negative to other key names."""
    path = Path(path)
    keys = {role: (columns or {}).get(role, role) for role in KEYS}
    task = RerankingTask()
    for line, obj in read_jsonl(path):
        query = json_value(obj, keys["query"], path, line)
        pos, neg = (_texts(obj, keys[role], path, line) for role in ("positive", "negative"))
        task.samples.append(RerankingSample(query, pos, neg))
    return _checked(task, path)


def reranking_from_python(data: Any, source: records.PythonSource) -> RerankingTask:
    """Samples ``{"query": str, "positive": [str], "negative": [str]}`` (sentence-transformers'
    RerankingEvaluator's), as dicts, tuples, columns or a Dataset."""
    task = RerankingTask()
    for row, (query, pos, neg) in records.rows(data, KEYS, source):
        task.samples.append(
            RerankingSample(
                records.text(query, source, row, "'query'"),
                records.texts(pos, source, row, "'positive'"),
                records.texts(neg, source, row, "'negative'"),
            )
        )
    return _checked(task, source)


def _checked(task: RerankingTask, source: Any) -> RerankingTask:
    kept, counts = usable_samples(task)
    if not kept:
        raise no_rows(source, "query with a positive and a negative", sum(counts.values()))
    return task


def detect(path: Path) -> bool:
    return jsonl_has(path, KEYS)


def usable_samples(task: RerankingTask) -> tuple[list[RerankingSample], dict[str, int]]:
    """Samples without empty texts; the empty texts and the dropped samples are counted."""
    counts = {"skipped_empty": 0, "skipped_no_positive": 0, "skipped_no_negative": 0}
    kept = []
    for s in task.samples:
        if not s.query.strip():
            counts["skipped_empty"] += 1
            continue
        pos = [t for t in s.positive if t.strip()]
        neg = [t for t in s.negative if t.strip()]
        counts["skipped_empty"] += len(s.positive) + len(s.negative) - len(pos) - len(neg)
        if not pos or not neg:
            counts["skipped_no_positive" if not pos else "skipped_no_negative"] += 1
            continue
        kept.append(RerankingSample(s.query, pos, neg))
    return kept, counts


def _reciprocal_rank(relevant: np.ndarray, scores: np.ndarray, at_k: int) -> float:
    order = np.argsort(-scores, kind="stable")[:at_k]
    hits = np.flatnonzero(relevant[order])
    return 1.0 / (hits[0] + 1) if len(hits) else 0.0


def evaluate_reranking(
    encode: Any, task: RerankingTask | str | os.PathLike, *, at_k: int = 10, batch_size: int = 128
) -> dict[str, Any]:
    """``map``, ``mrr@k``, ``ndcg@k`` (means over the kept queries) and counts."""
    task = records.as_task(task, RerankingTask, read_reranking, reranking_from_python, "reranking")
    samples, counts = usable_samples(task)
    if not samples:
        raise UserError("reranking: no query with a non-empty positive and negative")
    texts = (t for s in samples for t in (s.query, *s.positive, *s.negative))
    index, emb = embed_texts(as_encode(encode), texts, batch_size)
    emb = normalize_rows(emb)
    ap, rr, ndcg = [], [], []
    for s in samples:
        docs = emb[[index[t] for t in (*s.positive, *s.negative)]]
        scores = docs @ emb[index[s.query]]
        relevant = np.array([1] * len(s.positive) + [0] * len(s.negative))
        ap.append(average_precision_score(relevant, scores))
        rr.append(_reciprocal_rank(relevant, scores, at_k))
        ndcg.append(ndcg_score([relevant], [scores], k=at_k))
    return {
        "map": float(np.mean(ap)),
        f"mrr@{at_k}": float(np.mean(rr)),
        f"ndcg@{at_k}": float(np.mean(ndcg)),
        "n_queries": len(samples),
        "n_candidates": sum(len(s.positive) + len(s.negative) for s in samples),
        **counts,
    }


KIND = TaskKind(
    "reranking",
    read_reranking,
    evaluate_reranking,
    METRICS,
    "map",
    detect=detect,
    summary=".jsonl with query, positive, negative",
    from_python=reranking_from_python,
    task_type=RerankingTask,
)
