"""Batch dataclasses: every batch has named fields, never positional columns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SentenceBatch:
    """Unlabeled sentences (unsupervised SimCSE, TSDAE, ConSERT-unsup)."""

    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class PairBatch:
    """(anchor, positive[, negatives...]) rows for in-batch-negative training.

    `negatives` holds one list per negative column, each as long as `anchors`
    (supervised SimCSE: one column, the contradiction hypothesis).
    `dataset` names the source dataset when the batch was drawn from a single one.
    """

    anchors: list[str]
    positives: list[str]
    negatives: list[list[str]] = field(default_factory=list)
    dataset: str | None = None

    def __len__(self) -> int:
        return len(self.anchors)

    def __post_init__(self) -> None:
        if len(self.positives) != len(self.anchors):
            raise ValueError("anchors and positives differ in length")
        for col in self.negatives:
            if len(col) != len(self.anchors):
                raise ValueError("a negative column differs in length from anchors")
