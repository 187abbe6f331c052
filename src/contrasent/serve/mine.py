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

Work is done in chunks of anchors inside ``OUTPUT.mine-work/`` (corpus embeddings, one rows file
per finished chunk, a manifest), each file written atomically: a killed run resumes where it
stopped; the output is assembled atomically at the end and the work folder removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from contrasent.core.errors import UserError
from contrasent.core.fileio import atomic_write_text
from contrasent.core.rng import keyed_rng
from contrasent.data.readers import EMPTY_FIELD, PairReader, ReadStats, read_texts
from contrasent.model.similarity import exact_search
from contrasent.serve.chunks import save_npy

WORK_FORMAT = "contrasent-mine-work"
RANDOM_KEY = 0x6D696E65  # keyed draws of sampling "random"


@dataclass
class MineSettings:
    """The mining rules (the reference's option names; see the module doc)."""

    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None
    margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    sampling: Literal["top", "random"] = "top"
    seed: int = 12
    engine: Literal["exact", "faiss"] = "exact"

    def filtered(self) -> bool:
        return any(x is not None for x in (self.margin, self.relative_margin, self.max_score))

    def window(self, max_positives: int, corpus_size: int) -> tuple[int, int]:
        """``(range_min, range_max)``; the reference's default range_max (room for ten times
        the negatives when a filter may drop candidates); one UserError for a bad range."""
        if self.num_negatives < 1:
            raise UserError(f"--num_negatives must be >= 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise UserError(f"--range_min must be >= 0, got {self.range_min}")
        lo, hi = self.range_min, self.range_max
        if hi is None:
            room = self.num_negatives * (10 if self.filtered() else 1)
            hi = lo + room + max_positives
        if hi - lo < self.num_negatives:
            raise UserError(
                f"--range_min {lo} / --range_max {hi} leave {hi - lo} candidates for "
                f"--num_negatives {self.num_negatives}"
            )
        if self.range_max is not None and self.range_max > corpus_size:
            raise UserError(
                f"--range_max {self.range_max} is beyond the corpus ({corpus_size} texts)"
            )
        if lo + self.num_negatives > corpus_size - 1:
            raise UserError(
                f"--range_min {lo} + --num_negatives {self.num_negatives} is beyond the corpus "
                f"({corpus_size} texts, the anchor's own positive excluded)"
            )
        return lo, hi


@dataclass
class Problem:
    """Distinct anchors, the corpus, and each anchor's positives (corpus ids, first-seen order)."""

    queries: list[str]
    corpus: list[str]
    positives: list[list[int]]
    self_ids: np.ndarray  # [Q] corpus id of the anchor's own text, -1 if absent

    @classmethod
    def of(cls, anchors: list[str], positives: list[str], corpus: list[str] | None) -> Problem:
        texts = list(dict.fromkeys((corpus or []) + positives))
        ids = {t: i for i, t in enumerate(texts)}
        queries = list(dict.fromkeys(anchors))
        qids = {q: i for i, q in enumerate(queries)}
        pos: list[list[int]] = [[] for _ in queries]
        for a, p in zip(anchors, positives, strict=True):
            if ids[p] not in pos[qids[a]]:
                pos[qids[a]].append(ids[p])
        self_ids = np.array([ids.get(q, -1) for q in queries], dtype=np.int64)
        return cls(queries, texts, pos, self_ids)


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
def read_pairs(path: str, columns: dict | None, on_error: Any = "raise") -> tuple[list, list]:
    """``(anchors, positives)`` of a pairs file (any negatives columns are ignored); a row with
    an empty anchor or positive is one error (a counted skip with on_error skip)."""
    reader = PairReader(path, columns, on_error=on_error)
    stats = ReadStats(path)
    rows = [(r[0], r[1]) for r in reader.rows(stats)]
    empty = stats.skipped.get(EMPTY_FIELD, 0)
    if empty and on_error != "skip":
        raise UserError(
            f"{path}: {empty} row(s) without an anchor or a positive; every pair needs both "
            "(--on_error skip counts and skips them)"
        )
    stats.report()
    if not rows:
        raise UserError(f"{path}: no (anchor, positive) pairs ({stats.summary()})")
    return [a for a, _ in rows], [p for _, p in rows]


def read_corpus(path: str | None) -> list[str] | None:
    return None if path is None else list(read_texts(path))


# ----------------------------------------------------------------------------- the run
@dataclass
class MineResult:
    output: Path
    counts: Counts
    positive_scores: list[float] = field(default_factory=list)
    negative_scores: list[float] = field(default_factory=list)
    queries: int = 0
    corpus: int = 0
    chunks_resumed: int = 0


def mine(
    encode: Callable[[list[str]], np.ndarray],
    anchors: list[str],
    positives: list[str],
    output: str | Path,
    settings: MineSettings,
    corpus: list[str] | None = None,
    *,
    output_scores: bool = True,
    chunk_queries: int = 4096,
    shard: tuple[int, int] | None = None,
    identity: dict[str, Any] | None = None,
) -> MineResult:
    """Mine, write ``output`` (JSONL: anchor, positive, negative_1..N[, scores]); resumable.

    ``encode`` maps texts to NORMALISED float32 embeddings; ``identity`` (the model's record)
    goes into the work manifest so a resume with another model starts over."""
    out = Path(output)
    problem = Problem.of(anchors, positives, corpus)
    window = settings.window(max(len(p) for p in problem.positives), len(problem.corpus))
    lo_q, hi_q = _shard_range(len(problem.queries), shard)
    work = out.with_name(out.name + ".mine-work")
    manifest = _open_work(work, problem, settings, identity, shard)
    result = MineResult(out, Counts(), queries=hi_q - lo_q, corpus=len(problem.corpus))
    corpus_emb = _cached(work / "corpus.npy", lambda: encode(problem.corpus))
    k = min(window[1] + max(len(p) for p in problem.positives) + 1, len(problem.corpus))
    for start in range(lo_q, hi_q, chunk_queries):
        name = f"rows-{start:09d}.jsonl"
        if name in manifest["done"]:
            result.chunks_resumed += 1
            continue
        stop = min(start + chunk_queries, hi_q)
        lines, counts = _mine_chunk(encode, problem, corpus_emb, start, stop, k, settings, window)
        atomic_write_text(work / name, "".join(lines))
        manifest["done"][name] = counts
        atomic_write_text(work / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    _assemble(work, manifest, out, output_scores, result)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _mine_chunk(encode, problem: Problem, corpus_emb, start, stop, k, settings, window):
    q_emb = encode(problem.queries[start:stop])
    if settings.engine == "faiss":
        from contrasent.serve.faiss import import_faiss

        index = import_faiss().IndexFlatIP(corpus_emb.shape[1])
        index.add(np.ascontiguousarray(corpus_emb))
        scores, ids = index.search(np.ascontiguousarray(q_emb), k)
    else:
        scores, ids = exact_search(q_emb, corpus_emb, k)
    if scores.shape[1] < window[1]:  # a small corpus: pad to the window with no-candidates
        pad = window[1] - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    pos_ids = problem.positives[start:stop]
    pos_scores = [corpus_emb[p] @ q for p, q in zip(pos_ids, q_emb, strict=True)]
    neg_i, neg_s, counts = select_negatives(
        scores, ids, pos_scores, pos_ids, problem.self_ids[start:stop], settings, window,
        np.arange(start, stop),
    )  # fmt: skip
    lines = []
    for q in range(stop - start):
        full = bool(np.isfinite(neg_s[q]).all())
        for p, ps in zip(pos_ids[q], pos_scores[q].tolist(), strict=True):
            if not full:
                counts["short_rows"] = counts.get("short_rows", 0) + 1
                continue
            row = {"anchor": problem.queries[start + q], "positive": problem.corpus[p]}
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


def _fingerprint(problem: Problem) -> str:
    h = hashlib.sha256()
    for t in (*problem.queries, "\0", *problem.corpus):
        h.update(t.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


def _open_work(work: Path, problem, settings, identity, shard) -> dict[str, Any]:
    """The work folder's manifest: resumed when the inputs, rules and model are the same."""
    want = {
        "format": WORK_FORMAT,
        "inputs": _fingerprint(problem),
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
    parts = []
    for name in sorted(manifest["done"]):
        result.counts.add(manifest["done"][name])
        for line in (work / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            result.positive_scores.append(row["scores"][0])
            result.negative_scores.extend(row["scores"][1:])
            if not output_scores:
                del row["scores"]
                line = json.dumps(row, ensure_ascii=False)
            parts.append(line + "\n")
    atomic_write_text(out, "".join(parts))


def describe(result: MineResult, settings: MineSettings) -> str:
    """The statistics printed after mining: drops per rule and the score distributions."""
    c = result.counts
    lines = [
        f"mined {c.rows} rows ({settings.num_negatives} negatives each) for {result.queries} "
        f"anchors over {result.corpus} corpus texts -> {result.output}"
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
    pos, neg = np.asarray(result.positive_scores), np.asarray(result.negative_scores)
    for label, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("25%", lambda x: np.quantile(x, 0.25)),
                      ("median", np.median), ("75%", lambda x: np.quantile(x, 0.75)), ("max", np.max)):  # fmt: skip
        cells = [f"{fn(x):>10.4f}" if len(x) else f"{'-':>10}" for x in (pos, neg)]
        lines.append(f"{label:<8}{''.join(cells)}")
    return "\n".join(lines)
