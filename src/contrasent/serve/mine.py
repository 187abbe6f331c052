"""Hard-negative mining (``contrasent mine``): (anchor, positive) pairs -> the pairs with N hard
negatives each, the rule set of sentence-transformers' ``mine_hard_negatives`` (same negatives
for the deterministic settings: tested).

For each distinct anchor, the candidates are the corpus texts (default: every distinct
positive; a given corpus gets the positives appended, as the reference does) ranked by cosine
with the anchor: exact blocked top-k (:func:`contrasent.model.similarity.exact_search`) or a
faiss flat inner-product index. A candidate is dropped when it is the anchor itself or one of
its positives, when ``score + margin > positive score`` (absolute margin), when
``score > positive - |positive| * relative_margin`` (NV-Retriever's TopK-PercPos), or when
``score > max_score`` (the positive score is the LOWEST of the anchor's positives). Of the
survivors ranked ``range_min .. range_max`` (ranks counted after the drops), ``top`` keeps the
first ``num_negatives``, ``random`` draws them (keyed by the anchor: reproducible, independent of
shards and chunks). An anchor with fewer survivors than ``num_negatives`` yields no row
(counted), like the reference's n-tuple output.

The pairs are streamed (:mod:`contrasent.serve.mine_input`: read twice, ~150 bytes of numbers a
pair at the peak, whatever the texts' length); what is held is the candidate corpus: its texts
and its float32 embeddings (4 x dim bytes a text), plus one chunk of anchors and, for the statistics printed at the end,
4 x (1 + num_negatives) bytes a mined row. The corpus may come from an index folder of
``contrasent index build`` (its stored embeddings reused; only positives missing from it are
embedded).

Work is done in chunks of anchors inside ``OUTPUT.mine-work/`` (corpus embeddings, one rows file
per finished chunk, a manifest), each file written atomically: a killed run resumes where it
stopped; the output is assembled (streamed to a temporary file, then renamed) at the end and the
work folder removed.
"""

from __future__ import annotations

import json
import shutil
from array import array
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.fileio import atomic_write_text, atomic_writer
from contrasent.core.rng import keyed_rng
from contrasent.data.readers import read_texts
from contrasent.model.similarity import exact_search
from contrasent.serve.chunks import save_npy
from contrasent.serve.mine_input import AnchorCursor, Corpus, PairsFile, Problem, scan
from contrasent.serve.mine_options import MineSettings

__all__ = ["Corpus", "MineSettings", "PairsFile", "describe", "mine", "read_corpus"]

WORK_FORMAT = "contrasent-mine-work"
RANDOM_KEY = 0x6D696E65  # keyed draws of sampling "random"


@dataclass
class Counts:
    """What the filters dropped (candidates) and what came out (rows)."""

    candidates: int = 0
    anchor_itself: int = 0
    positives: int = 0
    margin: int = 0
    relative_margin: int = 0
    max_score: int = 0
    rows: int = 0
    short_rows: int = 0

    def add(self, other: dict[str, int]) -> None:
        for k, v in other.items():
            setattr(self, k, getattr(self, k) + v)


# ----------------------------------------------------------------------------- the rules
def select_negatives(
    scores: np.ndarray,
    ids: np.ndarray,
    positive_scores: list[np.ndarray],
    positive_ids: list[list[int]],
    self_ids: np.ndarray,
    settings: MineSettings,
    window: tuple[int, int],
    query_numbers: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The negatives of a block of anchors: ``(ids, scores, counts)``, each ``[Q, N]`` with
    ``-1`` / ``-inf`` where an anchor has fewer survivors. ``scores``/``ids``: the top candidates
    ``[Q, K]`` by score; ``positive_scores[q]`` the anchor's positive scores; ``query_numbers``
    the anchors' global numbers (keys of the random draw)."""
    s = settings
    scores = scores.astype(np.float32, copy=True)
    counts: dict[str, int] = {"candidates": int(np.isfinite(scores).sum())}
    drop = scores == -np.inf

    def apply(name: str, mask: np.ndarray) -> None:
        new = mask & ~drop
        counts[name] = int(new.sum())
        drop[:] |= new

    apply("anchor_itself", ids == self_ids[:, None])
    pos_mask = np.zeros_like(drop)
    for q, pids in enumerate(positive_ids):
        pos_mask[q] = np.isin(ids[q], pids)
    apply("positives", pos_mask)
    lowest = np.array([p.min() for p in positive_scores], dtype=np.float32)[:, None]
    if s.margin is not None:
        apply("margin", scores + np.float32(s.margin) > lowest)
    if s.relative_margin is not None:
        apply("relative_margin", scores > lowest - np.abs(lowest) * np.float32(s.relative_margin))
    if s.max_score is not None:
        apply("max_score", scores > np.float32(s.max_score))
    scores[drop] = -np.inf
    lo, hi = window
    order = np.argsort(-scores, axis=1, kind="stable")[:, lo:hi]  # survivors first, by score
    ranked_s = np.take_along_axis(scores, order, 1)
    ranked_i = np.take_along_axis(ids, order, 1)
    n = s.num_negatives
    if s.sampling == "top":
        pick = np.broadcast_to(np.arange(n), (len(scores), n))
    else:
        alive = np.isfinite(ranked_s).sum(1)
        pick = np.stack(
            [
                _draw(s.seed, int(g), max(int(a), n), n)
                for g, a in zip(query_numbers, alive, strict=True)
            ]
        )
    out_s = np.take_along_axis(ranked_s, pick, 1)
    out_i = np.take_along_axis(ranked_i, pick, 1)
    back = np.argsort(-out_s, axis=1, kind="stable")  # drawn negatives reported best first
    out_s, out_i = np.take_along_axis(out_s, back, 1), np.take_along_axis(out_i, back, 1)
    out_i[~np.isfinite(out_s)] = -1
    return out_i, out_s, counts


def _draw(seed: int, query: int, options: int, n: int) -> np.ndarray:
    return keyed_rng(seed, RANDOM_KEY, query).choice(options, size=n, replace=False)


# ----------------------------------------------------------------------------- inputs
def read_corpus(path: str | None) -> Corpus | None:
    """A ``--corpus`` file as candidate texts (streamed into the corpus)."""
    return None if path is None else Corpus(read_texts(path))


# ----------------------------------------------------------------------------- the run
@dataclass
class MineResult:
    output: Path
    counts: Counts
    positive_scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    negative_scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    queries: int = 0
    corpus: int = 0
    chunks_resumed: int = 0
    reused: int = 0  # corpus embeddings taken from an index
    notes: list[str] = field(default_factory=list)


def mine(
    encode: Callable[[list[str]], np.ndarray],
    pairs: Iterable[tuple[str, str]],
    output: str | Path,
    settings: MineSettings,
    corpus: Corpus | list[str] | None = None,
    *,
    output_scores: bool = True,
    chunk_queries: int = 4096,
    shard: tuple[int, int] | None = None,
    identity: dict[str, Any] | None = None,
) -> MineResult:
    """Mine, write ``output`` (JSONL: anchor, positive, negative_1..N[, scores]); resumable.

    ``pairs``: (anchor, positive) rows, iterated twice (a list, or a :class:`PairsFile` that
    streams a file). ``corpus``: extra candidate texts, or a :class:`Corpus` (e.g. an index's,
    whose embeddings are reused). ``encode`` maps texts to NORMALISED float32 embeddings;
    ``identity`` (the model's record) goes into the work manifest so a resume with another
    model starts over."""
    out = Path(output)
    if isinstance(corpus, list):
        corpus = Corpus(corpus)
    problem = scan(pairs, corpus)
    if isinstance(pairs, PairsFile):
        pairs.check()
    settings = settings.rules()
    window = settings.window(problem.max_positives, len(problem.corpus))
    lo_q, hi_q = _shard_range(problem.groups, shard)
    work = out.with_name(out.name + ".mine-work")
    manifest = _open_work(work, problem, settings, identity, shard, corpus)
    result = MineResult(out, Counts(), queries=hi_q - lo_q, corpus=len(problem.corpus))
    corpus_emb = _cached(work / "corpus.npy", lambda: _corpus_embeddings(encode, problem, corpus))
    if corpus is not None and corpus.embeddings is not None:
        result.reused = problem.given
    search = _searcher(settings, corpus_emb, problem, corpus, result)
    k = min(window[1] + problem.max_positives + 1, len(problem.corpus))
    cursor = AnchorCursor(pairs)
    for start in range(lo_q, hi_q, chunk_queries):
        name = f"rows-{start:09d}.jsonl"
        if name in manifest["done"]:
            result.chunks_resumed += 1
            continue
        stop = min(start + chunk_queries, hi_q)
        queries = cursor.take(problem.first_rows[start:stop])
        lines, counts = _mine_chunk(
            encode, search, problem, queries, corpus_emb, start, k, settings, window
        )
        atomic_write_text(work / name, "".join(lines))
        manifest["done"][name] = counts
        atomic_write_text(work / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    _assemble(work, manifest, out, output_scores, result)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _corpus_embeddings(encode, problem: Problem, corpus: Corpus | None) -> np.ndarray:
    """[C, dim]: an index's stored rows for its texts, ``encode`` for the rest (positives)."""
    if corpus is None or corpus.embeddings is None:
        return encode(problem.corpus)
    rows = np.asarray(problem.source_rows, dtype=np.int64)
    stored = np.asarray(corpus.embeddings[rows], dtype=np.float32)  # row i of an index: line i
    extra = problem.corpus[problem.given :]
    if not extra:
        return stored
    return np.concatenate([stored, np.asarray(encode(extra), dtype=np.float32)])


def _searcher(settings, corpus_emb, problem: Problem, corpus: Corpus | None, result: MineResult):
    """``search(queries [Q, dim], k) -> (scores, corpus ids)``, each [Q, k'] best first."""
    if settings.engine != "faiss":
        return lambda q, k: exact_search(q, corpus_emb, k)
    from contrasent.serve.faiss import import_faiss

    saved = corpus.faiss if corpus is not None else None
    if saved is not None and problem.given == len(problem.corpus) == saved.ntotal:
        to_corpus = np.full(len(corpus.embeddings), -1, dtype=np.int64)  # type: ignore[union-attr]
        to_corpus[problem.source_rows] = np.arange(problem.given)

        def saved_search(q, k):
            scores, rows = saved.search(np.ascontiguousarray(q, dtype=np.float32), k)
            return scores, np.where(rows >= 0, to_corpus[np.maximum(rows, 0)], -1)

        result.notes.append(f"searched with the faiss index saved in {corpus.folder}")
        return saved_search
    if saved is not None:
        result.notes.append(
            f"the faiss index of {corpus.folder} does not hold exactly the candidates (duplicate "  # type: ignore[union-attr]
            "texts, or positives missing from it): a flat faiss index over the corpus is used"
        )
    index = import_faiss().IndexFlatIP(corpus_emb.shape[1])
    index.add(np.ascontiguousarray(corpus_emb))
    return lambda q, k: index.search(np.ascontiguousarray(q, dtype=np.float32), k)


def _mine_chunk(encode, search, problem: Problem, queries, corpus_emb, start, k, settings, window):
    q_emb = encode(queries)
    scores, ids = search(q_emb, k)
    scores = np.where(ids >= 0, scores, -np.inf)  # faiss pads missing hits with id -1
    if scores.shape[1] < window[1]:  # a small corpus: pad to the window with no-candidates
        pad = window[1] - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    pos_ids = [problem.positives(g) for g in range(start, start + len(queries))]
    pos_scores = [corpus_emb[p] @ q for p, q in zip(pos_ids, q_emb, strict=True)]
    self_ids = np.array([problem.ids.get(q, -1) for q in queries], dtype=np.int64)
    neg_i, neg_s, counts = select_negatives(
        scores, ids, pos_scores, pos_ids, self_ids, settings, window,
        np.arange(start, start + len(queries)),
    )  # fmt: skip
    lines = []
    for q, anchor in enumerate(queries):
        full = bool(np.isfinite(neg_s[q]).all())
        for p, ps in zip(pos_ids[q], pos_scores[q].tolist(), strict=True):
            if not full:
                counts["short_rows"] = counts.get("short_rows", 0) + 1
                continue
            row = {"anchor": anchor, "positive": problem.corpus[p]}
            row |= {f"negative_{j + 1}": problem.corpus[i] for j, i in enumerate(neg_i[q])}
            row["scores"] = [ps, *neg_s[q].tolist()]
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            counts["rows"] = counts.get("rows", 0) + 1
    return lines, counts


def _shard_range(n: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        return 0, n
    i, parts = shard
    return n * i // parts, n * (i + 1) // parts


def _open_work(work: Path, problem, settings, identity, shard, corpus) -> dict[str, Any]:
    """The work folder's manifest: resumed when the inputs, rules and model are the same."""
    want = {
        "format": WORK_FORMAT,
        "inputs": problem.fingerprint,
        "index": corpus.folder and str(Path(corpus.folder).resolve()) if corpus else None,
        "settings": asdict(settings),
        "model": identity,
        "shard": list(shard) if shard else None,
    }
    file = work / "manifest.json"
    if file.is_file():
        try:
            have = json.loads(file.read_text(encoding="utf-8"))
        except ValueError:
            have = {}
        if {k: have.get(k) for k in want} == json.loads(json.dumps(want)):
            return have
        shutil.rmtree(work)  # another run's work: start over
    work.mkdir(parents=True, exist_ok=True)
    manifest = {**want, "done": {}}
    atomic_write_text(file, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _cached(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    arr = np.ascontiguousarray(compute(), dtype=np.float32)
    save_npy(path, arr)
    return arr


def _assemble(work: Path, manifest, out: Path, output_scores: bool, result: MineResult) -> None:
    """Concatenate the chunks' rows into ``out`` (a temp file renamed over it: never half
    written), one chunk in memory at a time; the scores kept for the statistics."""
    pos, neg = array("f"), array("f")  # 4 bytes a score, not a Python object
    with atomic_writer(out) as f:
        for name in sorted(manifest["done"]):
            result.counts.add(manifest["done"][name])
            for line in (work / name).read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                pos.append(row["scores"][0])
                neg.extend(row["scores"][1:])
                if not output_scores:
                    del row["scores"]
                    line = json.dumps(row, ensure_ascii=False)
                f.write(line + "\n")
    result.positive_scores = np.frombuffer(pos, dtype=np.float32)
    result.negative_scores = np.frombuffer(neg, dtype=np.float32)


def describe(result: MineResult, settings: MineSettings) -> str:
    """The statistics printed after mining: drops per rule and the score distributions."""
    c = result.counts
    reused = f" (embeddings of {result.reused} reused from the index)" if result.reused else ""
    lines = [
        *result.notes,
        f"mined {c.rows} rows ({settings.num_negatives} negatives each) for {result.queries} "
        f"anchors over {result.corpus} corpus texts{reused} -> {result.output}"
        + (f" ({result.chunks_resumed} chunks resumed)" if result.chunks_resumed else ""),
        f"candidates ranked: {c.candidates}; dropped: {c.anchor_itself} the anchor itself, "
        f"{c.positives} its positives",
    ]
    for name in ("margin", "relative_margin", "max_score"):
        if getattr(settings, name) is not None:
            n = getattr(c, name)
            share = 100 * n / max(c.candidates, 1)
            lines.append(
                f"dropped as likely false negatives by --{name} {getattr(settings, name)}: "
                f"{n} ({share:.2f}% of candidates)"
            )
    if c.short_rows:
        lines.append(
            f"rows without {settings.num_negatives} negatives (not written): {c.short_rows}"
        )
    lines.append(f"{'score':<8}{'positive':>10}{'negative':>10}")
    pos, neg = result.positive_scores, result.negative_scores
    for label, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("25%", lambda x: np.quantile(x, 0.25)),
                      ("median", np.median), ("75%", lambda x: np.quantile(x, 0.75)), ("max", np.max)):  # fmt: skip
        cells = [f"{fn(x):>10.4f}" if len(x) else f"{'-':>10}" for x in (pos, neg)]
        lines.append(f"{label:<8}{''.join(cells)}")
    return "\n".join(lines)
