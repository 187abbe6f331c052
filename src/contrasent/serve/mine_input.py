"""The inputs of hard-negative mining, streamed: the pairs are read twice and never held.

Pass 1 (:func:`scan`) builds the candidate corpus (the given corpus, then every positive not in
it: sentence-transformers' rule) and, per pair, only numbers: the 16-byte digest of its anchor
and its positive's corpus id. The digests group the pairs by distinct anchor (numbered in
first-seen order, as the reference groups them), after which each anchor is its first row's
number and its positives a slice of a sorted array: 40 bytes a pair kept, ~150 at the
peak of the grouping (measured on 400,000 pairs), whatever the texts' length. Pass 2
(:class:`AnchorCursor`) reads the file forwards again and picks the anchors of one chunk at a
time (a chunk's anchors first appear in increasing rows).

A corpus can also come from an index folder of ``contrasent index build``
(:func:`index_corpus`): its texts and its stored embedding rows are reused.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import UserError
from contrasent.data.readers import EMPTY_FIELD, PairReader, ReadStats


class PairsFile:
    """The (anchor, positive) rows of a pairs file, re-readable (one pass per iteration); any
    negative columns are ignored. A row with an empty anchor or positive is one error (a
    counted skip with on_error skip)."""

    def __init__(self, path: str, columns: dict | None = None, on_error: Any = "raise") -> None:
        self.path, self.columns, self.on_error = path, columns, on_error
        self.stats: ReadStats | None = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        reader = PairReader(self.path, self.columns, on_error=self.on_error)
        stats = ReadStats(self.path)
        for row in reader.rows(stats):
            yield row[0], row[1]
        self.stats = stats

    def check(self) -> None:
        """After a full pass: the empty-field rows as one line (raise), or the counted skips."""
        stats = self.stats
        if stats is None:
            return
        empty = stats.skipped.get(EMPTY_FIELD, 0)
        if empty and self.on_error != "skip":
            raise UserError(
                f"{self.path}: {empty} row(s) without an anchor or a positive; every pair needs "
                "both (--on_error skip counts and skips them)"
            )
        stats.report()
        if not stats.rows:
            raise UserError(f"{self.path}: no (anchor, positive) pairs ({stats.summary()})")


@dataclass
class Corpus:
    """Candidate texts given before the positives: ``texts`` in order, and (from an index) the
    stored embedding matrix with each text's row in it."""

    texts: Iterable[str]
    embeddings: Any = None  # [rows, dim] (memmap) of an index
    rows: list[int] | None = None  # row of texts[i] in embeddings
    faiss: Any = None  # the index's own faiss index (ids = rows), if it has one
    folder: str | None = None


@dataclass
class Problem:
    """Distinct anchors (groups) and the corpus; see the module doc."""

    corpus: list[str]
    ids: dict[str, int]  # corpus text -> id
    given: int  # corpus ids below this came from the given corpus, the rest are positives
    first_rows: np.ndarray  # [G] the row of each anchor's first pair (increasing)
    order: np.ndarray  # [P] pair rows sorted by (anchor, row)
    bounds: np.ndarray  # [G + 1] anchor g's pairs: order[bounds[g]:bounds[g + 1]]
    positive_ids: np.ndarray  # [P] corpus id of each pair's positive
    max_positives: int
    fingerprint: str
    source_rows: list[int] | None = field(default=None, repr=False)  # from Corpus.rows

    @property
    def groups(self) -> int:
        return len(self.first_rows)

    def positives(self, g: int) -> list[int]:
        """Anchor g's distinct positives (corpus ids, first-seen order)."""
        pids = self.positive_ids[self.order[self.bounds[g] : self.bounds[g + 1]]]
        return list(dict.fromkeys(pids.tolist()))


def scan(pairs: Iterable[tuple[str, str]], corpus: Corpus | None) -> Problem:
    """Pass 1 over the pairs (see the module doc)."""
    h = hashlib.sha256()
    ids: dict[str, int] = {}
    source_rows = [] if corpus is not None and corpus.rows is not None else None
    for i, text in enumerate(corpus.texts if corpus is not None else ()):
        if text not in ids:
            ids[text] = len(ids)
            if source_rows is not None:
                source_rows.append(corpus.rows[i])  # type: ignore[union-attr]
        h.update(text.encode("utf-8", "surrogatepass") + b"\n")
    given = len(ids)
    h.update(b"\0")
    digests, positive_ids = bytearray(), array("q")  # 16 + 8 bytes a pair
    for anchor, positive in pairs:
        a = anchor.encode("utf-8", "surrogatepass")
        digests += hashlib.blake2b(a, digest_size=16).digest()
        positive_ids.append(ids.setdefault(positive, len(ids)))
        h.update(a + b"\t" + positive.encode("utf-8", "surrogatepass") + b"\n")
    if not positive_ids:
        raise UserError("no (anchor, positive) pairs to mine")
    _, first, inverse = np.unique(
        np.frombuffer(digests, dtype="V16"), return_index=True, return_inverse=True
    )
    del digests
    by_first = np.argsort(first)  # anchors numbered by first appearance
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(by_first))
    group = rank[inverse.ravel()]  # [P]
    order = np.argsort(group, kind="stable")  # rows grouped by anchor, in file order
    bounds = np.searchsorted(group[order], np.arange(len(first) + 1))
    pids = np.frombuffer(positive_ids, dtype=np.int64)
    distinct = np.unique(group * np.int64(len(ids)) + pids) // len(ids)  # (anchor, positive)
    return Problem(
        corpus=list(ids),
        ids=ids,
        given=given,
        first_rows=first[by_first],
        order=order,
        bounds=bounds,
        positive_ids=pids,
        max_positives=int(np.bincount(distinct).max()),
        fingerprint=h.hexdigest(),
        source_rows=source_rows,
    )


class AnchorCursor:
    """Pass 2: the anchor texts of given (increasing) rows, reading the pairs forwards once."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._rows = enumerate(pairs)
        self._at = -1

    def take(self, rows: np.ndarray) -> list[str]:
        out = []
        for want in rows.tolist():
            while self._at < want:
                self._at, (anchor, _) = next(self._rows)
            out.append(anchor)
        return out


# ----------------------------------------------------------------------------- an index
def index_corpus(folder: str | Path, engine: str) -> Corpus:
    """The non-empty texts of an index folder (stripped, as ``--corpus`` reads a file), its
    embedding rows (memory-mapped) and, for engine faiss, its saved faiss index if any."""
    import json

    from contrasent.serve.search import Index

    index = Index.load(folder, engine="faiss" if engine == "faiss" else "exact")
    skip = set(index.excluded.tolist())
    rows, texts = [], []
    with open(Path(folder) / "texts.jsonl", "rb") as f:  # read in order, not by offset
        for i, line in enumerate(f):
            text = json.loads(line).strip()
            if i not in skip and text:
                rows.append(i)
                texts.append(text)
    faiss = index._faiss[0] if index._faiss else None
    return Corpus(texts, index.embeddings, rows, faiss, str(folder))
