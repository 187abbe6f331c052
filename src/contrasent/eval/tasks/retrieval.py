"""Retrieval on a user's folder in the BEIR layout.

``corpus.jsonl`` (``_id``, ``text``, optional ``title``: the document is ``title + " " + text``,
stripped, as BEIR embeds it), ``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv``
(header; query-id, corpus-id, score; score > 0 is relevant, larger is more relevant). Each query's
top 100 documents by cosine come from the exact blocked search (:func:`contrasent.model.similarity.
exact_search`), ties ordered by document id as sentence-transformers orders them; the metrics are
trec_eval's (``pytrec_eval``), on that ranking, with graded relevance in nDCG as BEIR reports it.
Queries with no relevant document are left out and counted, as are empty queries and documents.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import UserError, where
from contrasent.eval.tasks import records
from contrasent.eval.tasks.files import (
    as_encode,
    embed_texts,
    json_value,
    no_rows,
    parse_int,
    read_jsonl,
    read_table,
)
from contrasent.eval.tasks.kind import TaskKind
from contrasent.model.similarity import exact_search, normalize_rows

QREL_COLUMNS = ("query-id", "corpus-id", "score")
#: reported name -> trec_eval measure (mrr@10 is recip_rank on the run cut at 10: see below)
MEASURES = {
    "ndcg@10": "ndcg_cut_10",
    "map@100": "map_cut_100",
    "recall@1": "recall_1",
    "recall@10": "recall_10",
    "recall@100": "recall_100",
    "accuracy@1": "success_1",
    "accuracy@10": "success_10",
}
METRICS = ("ndcg@10", "mrr@10", *list(MEASURES)[1:])
DEPTH = 100  # the deepest cutoff of any metric
TIE_SLACK = 16  # extra rows searched so exact ties at the cutoff are ordered by id, not by chance
QUERY_CHUNK = 1024  # queries per search pass: keeps the score block [queries x rows] large enough


@dataclass
class RetrievalTask:
    """``corpus`` and ``queries``: id -> text; ``qrels``: query id -> {document id: grade}.
    ``replaced_judgments``: qrels lines that judged a (query, document) pair again (the last
    grade counts, as in BEIR's loader)."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    replaced_judgments: int = 0


# ----------------------------------------------------------------------------- reading
def _jsonl_file(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.jsonl", folder / f"{name}.jsonl.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{where(folder)}: no {name}.jsonl in this folder (BEIR layout expected)")


def _read_texts(path: Path, titles: bool) -> dict[str, str]:
    texts: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, obj in read_jsonl(path):
        doc_id = str(json_value(obj, "_id", path, line, (str, int)))
        text = json_value(obj, "text", path, line)
        if doc_id in lines:
            raise UserError(
                f"{where(path, line)}: _id {doc_id!r} again (first on line {lines[doc_id]})"
            )
        if titles:  # a document: BEIR embeds the title, a space, the text, stripped
            title = obj.get("title")
            text = (title + " " + text).strip() if isinstance(title, str) else text.strip()
        texts[doc_id] = text
        lines[doc_id] = line
    if not texts:
        raise no_rows(path, "entries")
    return texts


def qrels_file(folder: Path, split: str) -> Path:
    """``qrels/<split>.tsv`` (or .gz); for the default split, else the only file there."""
    files = sorted(p for p in (folder / "qrels").glob("*") if p.name.endswith((".tsv", ".tsv.gz")))
    for path in files:
        if path.name in (f"{split}.tsv", f"{split}.tsv.gz"):
            return path
    if split == "test" and len(files) == 1:
        return files[0]
    found = ", ".join(p.name for p in files) or "none"
    raise UserError(f"{where(folder / 'qrels')}: no {split}.tsv (qrels files found: {found})")


def read_qrels(
    path: Path, queries: Mapping[str, str], corpus: Mapping[str, str], columns: Any = None
) -> tuple[dict[str, dict[str, int]], int]:
    """(query id -> {document id: grade}, number of repeated judgments)."""
    qrels: dict[str, dict[str, int]] = {}
    replaced = 0
    for line, (qid, did, score) in read_table(path, QREL_COLUMNS, columns):
        qid, did = qid.strip(), did.strip()
        for name, ids, value in (("query", queries, qid), ("document", corpus, did)):
            if value not in ids:
                raise UserError(f"{where(path, line)}: unknown {name} id {value!r}")
        replaced += did in qrels.get(qid, {})
        qrels.setdefault(qid, {})[did] = parse_int(score, path, line, "score")
    if not qrels:
        raise no_rows(path, "judgments")
    return qrels, replaced


def read_retrieval(
    path: str | os.PathLike, columns: Mapping[str, str] | None = None, split: str = "test"
) -> RetrievalTask:
    """Read and check a BEIR folder; ``columns`` renames the qrels header's columns."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(
            f"{where(folder)}: not a folder (BEIR layout: corpus.jsonl, queries.jsonl, qrels/)"
        )
    corpus = _read_texts(_jsonl_file(folder, "corpus"), titles=True)
    queries = _read_texts(_jsonl_file(folder, "queries"), titles=False)
    qrels_path = qrels_file(folder, split)
    task = RetrievalTask(corpus, queries, *read_qrels(qrels_path, queries, corpus, columns))
    return _checked(task, qrels_path)


def _checked(task: RetrievalTask, source: Any) -> RetrievalTask:
    if not select_queries(task)[0]:
        raise no_rows(source, "query with a non-empty text and a relevant document")
    return task


def retrieval_from_python(data: Any, source: records.PythonSource) -> RetrievalTask:
    """``{"queries": ..., "corpus": ..., "relevant_docs": ...}`` (or ``qrels``; or the tuple
    ``(queries, corpus, relevant_docs)``: sentence-transformers' InformationRetrievalEvaluator's
    arguments). ``queries``/``corpus``: id -> text (a document may be ``{"title", "text"}``), or
    rows with ``_id``, ``text`` (``title``), as BEIR's datasets hold them; ``relevant_docs``:
    query id -> document ids (grade 1) or {document id: grade}, or rows ``query-id``,
    ``corpus-id``, ``score``."""
    if isinstance(data, (tuple, list)) and len(data) == 3:
        data = dict(zip(("queries", "corpus", "relevant_docs"), data, strict=True))
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: expected {{'queries', 'corpus', 'relevant_docs'}}")
    rel_key = "qrels" if "qrels" in data else "relevant_docs"
    unknown = sorted(set(data) - {"queries", "corpus", rel_key})
    missing = [k for k in ("queries", "corpus", rel_key) if k not in data]
    if unknown or missing:
        raise UserError(
            f"{source}: {'no ' + repr(missing[0]) if missing else 'unknown key ' + repr(unknown[0])}"
            "; expected the keys 'queries', 'corpus' and 'relevant_docs' (or 'qrels')"
        )
    corpus = _python_texts(data["corpus"], source.of("corpus"), titles=True)
    queries = _python_texts(data["queries"], source.of("queries"), titles=False)
    qrels, replaced = _python_qrels(data[rel_key], source.of(rel_key), queries, corpus)
    return _checked(RetrievalTask(corpus, queries, qrels, replaced), source)


def _python_texts(data: Any, source: records.PythonSource, titles: bool) -> dict[str, str]:
    """id -> text (the file reader's rules: ids as text, a document's title + text)."""
    if isinstance(data, Mapping) and "_id" not in data:  # id -> text (or -> {title, text})
        items = enumerate(([k, v] for k, v in data.items()), 1)
    else:  # rows with _id, text (title)
        items = ((n, [o.get("_id"), o]) for n, o in enumerate(_dicts(data, source), 1))
    texts: dict[str, str] = {}
    for row, (doc_id, value) in items:
        title = None
        if isinstance(value, Mapping):
            title = value.get("title") if titles else None
            value = value.get("text")
        text = records.text(value, source, row, "text")
        if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
            raise UserError(f"{source.at(row)}: _id must be a str or an int, found {doc_id!r:.40}")
        if str(doc_id) in texts:
            raise UserError(f"{source.at(row)}: _id {str(doc_id)!r} again")
        if titles:
            text = (title + " " + text).strip() if isinstance(title, str) else text.strip()
        texts[str(doc_id)] = text
    if not texts:
        raise no_rows(source, "entries")
    return texts


def _dicts(data: Any, source: records.PythonSource) -> Any:
    names = getattr(data, "column_names", None)
    if names is not None or (isinstance(data, Sequence) and not isinstance(data, str)):
        for row, obj in enumerate(data, 1):
            if not isinstance(obj, Mapping):
                raise UserError(f"{source.at(row)}: expected a dict with _id and text")
            yield obj
        return
    raise UserError(f"{source}: expected a dict id -> text or rows with _id and text")


def _python_qrels(
    data: Any, source: records.PythonSource, queries: Mapping, corpus: Mapping
) -> tuple[dict[str, dict[str, int]], int]:
    if isinstance(data, Mapping) and "query-id" not in data:
        triples = [
            [qid, did, grade]
            for qid, docs in data.items()
            for did, grade in (
                docs.items() if isinstance(docs, Mapping) else ((d, 1) for d in docs)
            )
        ]
        rows = enumerate(triples, 1)
    else:
        rows = records.rows(data, QREL_COLUMNS, source)
    qrels: dict[str, dict[str, int]] = {}
    replaced = 0
    for row, (qid, did, score) in rows:
        qid, did = str(qid).strip(), str(did).strip()
        for name, ids, value in (("query", queries, qid), ("document", corpus, did)):
            if value not in ids:
                raise UserError(f"{source.at(row)}: unknown {name} id {value!r}")
        replaced += did in qrels.get(qid, {})
        qrels.setdefault(qid, {})[did] = records.integer(score, source, row, "score")
    if not qrels:
        raise no_rows(source, "judgments")
    return qrels, replaced


def detect(path: Path) -> bool:
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    return all({f"{n}.jsonl", f"{n}.jsonl.gz"} & names for n in ("corpus", "queries"))


# ----------------------------------------------------------------------------- searching
def check_ids(task: RetrievalTask) -> None:
    """Every judged query and document exists (the reader checks this line by line)."""
    for qid, judged in task.qrels.items():
        unknown = [qid] if qid not in task.queries else [d for d in judged if d not in task.corpus]
        if unknown:
            what = "query" if qid not in task.queries else f"document (judged for {qid!r})"
            raise UserError(f"retrieval qrels: unknown {what} id {unknown[0]!r}")


def select_queries(task: RetrievalTask) -> tuple[dict[str, str], dict[str, int]]:
    """The evaluated queries (non-empty text, a document with grade > 0) and the counts of the
    ones left out."""
    counts = {"skipped_empty_queries": 0, "skipped_no_relevant": 0}
    kept = {}
    for qid, text in task.queries.items():
        if not any(g > 0 for g in task.qrels.get(qid, {}).values()):
            counts["skipped_no_relevant"] += 1
        elif not text.strip():
            counts["skipped_empty_queries"] += 1
        else:
            kept[qid] = text
    return kept, counts


def search(
    emb: np.ndarray, index: dict[str, int], queries: list[str], docs: dict[str, str], depth: int
) -> list[list[tuple[str, float]]]:
    """Top ``depth`` (document id, cosine) per query, by score then id.

    ``emb``: unit rows of every distinct text. Only document rows are searched; a row shared by
    several documents (the same text) stands for all of them, so ties between those documents
    are ordered here, exactly, rather than left to the search's cutoff.
    """
    ids_of_row: dict[int, list[str]] = {}
    for did in sorted(docs):
        ids_of_row.setdefault(index[docs[did]], []).append(did)
    excluded = np.setdiff1d(np.arange(len(emb)), np.fromiter(ids_of_row, np.int64))
    out = []
    for start in range(0, len(queries), QUERY_CHUNK):
        rows = [index[q] for q in queries[start : start + QUERY_CHUNK]]
        scores, hits = exact_search(emb[rows], emb, depth + TIE_SLACK, excluded=excluded)
        for row_scores, row_hits in zip(scores.tolist(), hits.tolist(), strict=True):
            ranked = [
                (d, s) for r, s in zip(row_hits, row_scores, strict=True) for d in ids_of_row[r]
            ]
            out.append(sorted(ranked, key=lambda h: (-h[1], h[0]))[:depth])
    return out


def trec_metrics(
    qrels: dict[str, dict[str, int]], runs: dict[str, list[tuple[str, float]]]
) -> dict[str, float]:
    """Means over ``runs``' queries of trec_eval's measures on the given rankings."""
    import pytrec_eval  # optional: only retrieval needs it

    # trec_eval re-sorts a run by score and breaks ties by document id DEscending; scores that
    # fall with the rank make it evaluate exactly our order (ties by id ascending)
    def by_rank(hits: list[tuple[str, float]]) -> dict[str, float]:
        return {did: float(len(hits) - rank) for rank, (did, _) in enumerate(hits)}

    measures = {"ndcg_cut.10", "map_cut.100", "recall.1,10,100", "success.1,10"}
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(
        {q: by_rank(h) for q, h in runs.items()}
    )
    # trec_eval's recip_rank has no cutoff: MRR@10 is recip_rank on the run cut at 10
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(
        {q: by_rank(h[:10]) for q, h in runs.items()}
    )
    means = {
        name: float(np.mean([full.get(q, {}).get(m, 0.0) for q in runs]))
        for name, m in MEASURES.items()
    }
    means["mrr@10"] = float(np.mean([cut.get(q, {}).get("recip_rank", 0.0) for q in runs]))
    return {name: means[name] for name in METRICS}


def evaluate_retrieval(
    encode: Any, task: RetrievalTask | str | os.PathLike, *, batch_size: int = 128
) -> dict[str, Any]:
    """The metrics of ``METRICS`` (means over the evaluated queries) and counts."""
    task = records.as_task(task, RetrievalTask, read_retrieval, retrieval_from_python, "retrieval")
    check_ids(task)
    queries, counts = select_queries(task)
    docs = {did: text for did, text in task.corpus.items() if text.strip()}
    if not queries or not docs:
        raise UserError("retrieval: no query with a relevant document, or no non-empty document")
    index, emb = embed_texts(as_encode(encode), [*queries.values(), *docs.values()], batch_size)
    hits = search(normalize_rows(emb), index, list(queries.values()), docs, DEPTH)
    qrels = {qid: task.qrels[qid] for qid in queries}
    metrics = trec_metrics(qrels, dict(zip(queries, hits, strict=True)))
    return {
        **metrics,
        "n_queries": len(queries),
        "n_docs": len(docs),
        "skipped_empty_docs": len(task.corpus) - len(docs),
        **counts,
        "replaced_judgments": task.replaced_judgments,
    }


KIND = TaskKind(
    "retrieval",
    read_retrieval,
    evaluate_retrieval,
    METRICS,
    "ndcg@10",
    detect=detect,
    summary="a folder: corpus.jsonl, queries.jsonl, qrels/",
    from_python=retrieval_from_python,
    task_type=RetrievalTask,
)
