"""Typed batches: every batch has named fields and knows how to slice itself.

Every batch also knows its place in the run: ``index`` (the global batch number in the data
stream) and ``offset`` (the global row number of its row 0: a process's slice of a global batch
has offset ``rank * rows_per_process``, a gradient-cache chunk its start within that). Randomness
that belongs to a row (MLM masks, text noise) is drawn from a generator keyed by
``(seed, index, offset + i, ...)`` (:func:`row_keys`), so it is the same whatever the number of
processes, the gradient-cache chunking or a resume: no generator state to carry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

B = TypeVar("B", bound="Batch")


@dataclass
class Batch:
    """Base class: ``__len__`` rows; :meth:`slice` cuts the per-row fields named in ``ROWS``."""

    #: names of the fields holding one entry per row (cut by :meth:`slice`)
    ROWS: ClassVar[tuple[str, ...]] = ()
    index: int = field(default=0, kw_only=True)
    offset: int = field(default=0, kw_only=True)

    def __len__(self) -> int:
        return len(getattr(self, self.ROWS[0]))

    def _cut(self, name: str, value: Any, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of field ``name`` (override for fields of other shapes)."""
        return value[start:stop]

    def slice(self: B, start: int, stop: int) -> B:
        """Rows ``[start, stop)`` as a batch of the same type (``offset`` moves with them)."""
        n = len(self)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"slice [{start}, {stop}) of a batch of {n} rows")
        cut = {name: self._cut(name, getattr(self, name), start, stop) for name in self.ROWS}
        return dataclasses.replace(self, **cut, offset=self.offset + start)

    def check_lengths(self) -> None:
        n = len(self)
        for name in self.ROWS:
            if self._length(name) != n:
                raise ValueError(
                    f"{type(self).__name__}.{name} has {self._length(name)} rows, not {n}"
                )

    def _length(self, name: str) -> int:
        return len(getattr(self, name))


def row_keys(batch: Batch, salt: int = 0) -> list[tuple[int, ...]]:
    """Per-row keys ``(index, global row, salt)`` for keyed randomness (see the module doc)."""
    return [(batch.index, batch.offset + i, salt) for i in range(len(batch))]


@dataclass
class SentenceBatch(Batch):
    """Unlabeled sentences (unsupervised SimCSE, TSDAE, ConSERT-unsup)."""

    texts: list[str]
    ROWS = ("texts",)

    def __post_init__(self) -> None:
        self.check_lengths()


@dataclass
class NumberedSentenceBatch(SentenceBatch):
    """Sentences with their line numbers (0-based) in their text file, i.e. their rows in
    `contrasent embed`'s output for that file (data kind ``text_lines``): what a precomputed
    embedding of each row is looked up by. ``source_lines``: the file's line count (empty lines
    included), when a scan counted it."""

    lines: list[int] = field(default_factory=list)
    source: str = field(default="", kw_only=True)
    source_lines: int | None = field(default=None, kw_only=True)
    ROWS = ("texts", "lines")


@dataclass
class PairBatch(Batch):
    """(anchor, positive[, negatives...]) rows for in-batch-negative training.

    ``negatives`` holds one list per negative COLUMN, each as long as ``anchors`` (supervised
    SimCSE: one column, the contradiction hypothesis). ``dataset`` names the source dataset
    when the batch was drawn from a single one.
    """

    anchors: list[str]
    positives: list[str]
    negatives: list[list[str]] = field(default_factory=list)
    dataset: str | None = None
    ROWS = ("anchors", "positives", "negatives")

    def __post_init__(self) -> None:
        self.check_lengths()

    def _cut(self, name: str, value: Any, start: int, stop: int) -> Any:
        if name == "negatives":
            return [column[start:stop] for column in value]
        return value[start:stop]

    def _length(self, name: str) -> int:
        if name == "negatives":
            lengths = {len(c) for c in self.negatives}
            if len(lengths) > 1:
                raise ValueError("negative columns differ in length")
            return lengths.pop() if lengths else len(self.anchors)
        return len(getattr(self, name))


@dataclass
class ScoredPairBatch(Batch):
    """(sentence1, sentence2, score) rows: STS-style graded pairs or 0/1 duplicate flags.

    ``scores`` are floats already normalised by the data kind (``scored_pairs``: the declared
    range mapped onto [0, 1]), so every objective reads one scale.
    """

    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    ROWS = ("sentences1", "sentences2", "scores")

    def __post_init__(self) -> None:
        self.check_lengths()


NLI_LABELS = ("entailment", "neutral", "contradiction")


@dataclass
class NLIBatch(Batch):
    """Labelled (premise, hypothesis) pairs; ``labels`` index :data:`NLI_LABELS`
    (0 entailment, 1 neutral, 2 contradiction), the SBERT/ConSERT classifier's order."""

    premises: list[str]
    hypotheses: list[str]
    labels: list[int]
    ROWS = ("premises", "hypotheses", "labels")

    def __post_init__(self) -> None:
        self.check_lengths()
        bad = [x for x in self.labels if not 0 <= x < len(NLI_LABELS)]
        if bad:
            raise ValueError(f"NLI labels must be 0..{len(NLI_LABELS) - 1}, got {bad[0]}")
