"""The DeCLUTR batch: anchor and positive span texts of a few documents.

Rows are documents. Each row holds ``num_anchors`` anchor texts and, for each anchor,
``num_positives`` positive texts. The flat views are laid out as the reference's model
unpacks them (``unpack_batch`` then ``reshape(num_anchors_total, -1, dim)``): anchors
document-major, positives anchor-major, so ``positive_texts`` reshaped to
``[len(anchor_texts), num_positives]`` lines each anchor up with its own positives.

``index`` / ``offset`` follow the Engine v2 ``Batch`` contract (the batch's number in the stream
and the global row of its row 0); they are defined here until that base class lands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from contrasent.data.spans import DocumentSpans, SpanSampler, TokenizedDocument

__all__ = ["SpanBatch", "make_span_batch"]


@dataclass
class SpanBatch:
    """``anchors[d][i]``: anchor ``i`` of document ``d``; ``positives[d][i][j]``: its positives."""

    anchors: list[list[str]]
    positives: list[list[list[str]]]
    sources: list[str] = field(default_factory=list)
    """Where each document came from (``file:line``), for reports; may be empty."""
    spans: list[DocumentSpans] = field(default_factory=list)
    """The token offsets behind the texts (diagnostics: positive/anchor relations); may be empty."""
    index: int = field(default=0, kw_only=True)
    offset: int = field(default=0, kw_only=True)

    def __post_init__(self) -> None:
        if len(self.positives) != len(self.anchors):
            raise ValueError("anchors and positives differ in their number of documents")
        if self.anchors:
            a = len(self.anchors[0])
            p = len(self.positives[0][0]) if self.positives[0] else 0
            for doc_a, doc_p in zip(self.anchors, self.positives, strict=True):
                if len(doc_a) != a or len(doc_p) != a or any(len(g) != p for g in doc_p):
                    raise ValueError("every document needs the same numbers of anchors/positives")
            if a < 1 or p < 1:
                raise ValueError("a document needs at least one anchor and one positive each")
        for name in ("sources", "spans"):
            if getattr(self, name) and len(getattr(self, name)) != len(self.anchors):
                raise ValueError(f"{name} must be empty or one per document")

    def __len__(self) -> int:
        return len(self.anchors)

    @property
    def num_anchors(self) -> int:
        return len(self.anchors[0]) if self.anchors else 0

    @property
    def num_positives(self) -> int:
        return len(self.positives[0][0]) if self.positives and self.positives[0] else 0

    @property
    def anchor_texts(self) -> list[str]:
        """``[len(self) * num_anchors]``, document-major."""
        return [a for doc in self.anchors for a in doc]

    @property
    def positive_texts(self) -> list[str]:
        """``[len(self) * num_anchors * num_positives]``, anchor-major."""
        return [p for doc in self.positives for group in doc for p in group]

    def slice(self, start: int, stop: int) -> SpanBatch:
        """Documents ``[start, stop)``; ``offset`` moves to the first of them."""
        return SpanBatch(
            self.anchors[start:stop],
            self.positives[start:stop],
            self.sources[start:stop],
            self.spans[start:stop],
            index=self.index,
            offset=self.offset + start,
        )


def make_span_batch(
    documents: Sequence[TokenizedDocument],
    sampler: SpanSampler,
    rng: np.random.Generator | Sequence[np.random.Generator],
    *,
    index: int = 0,
    offset: int = 0,
) -> SpanBatch:
    """Sample every document's spans into one batch.

    ``rng`` is one generator drawn in document order, or one generator per document (the
    engine keys these per document, e.g. ``keyed_rng(seed, SALT, epoch, document_number)``,
    so a document's spans depend neither on its batch nor on the world size). Documents must
    have passed the length filter (:meth:`SpanSampler.prepare`).
    """
    if not documents:
        raise ValueError("a span batch needs at least one document")
    rngs = [rng] * len(documents) if isinstance(rng, np.random.Generator) else list(rng)
    if len(rngs) != len(documents):
        raise ValueError(f"{len(rngs)} generators for {len(documents)} documents")
    anchors, positives, spans = [], [], []
    for doc, g in zip(documents, rngs, strict=True):
        a, p, s = sampler.sample(doc, g)
        anchors.append(a)
        positives.append(p)
        spans.append(s)
    return SpanBatch(
        anchors,
        positives,
        [d.source for d in documents],
        spans,
        index=index,
        offset=offset,
    )
