"""The DeCLUTR batch: anchor and positive span texts of a few documents.

Rows are documents. Each row holds ``num_anchors`` anchor texts and, for each anchor,
``num_positives`` positive texts. The flat views are laid out as the reference's model
unpacks them (``unpack_batch`` then ``reshape(num_anchors_total, -1, dim)``): anchors
document-major, positives anchor-major, so ``positive_texts`` reshaped to
``[len(anchor_texts), num_positives]`` lines each anchor up with its own positives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contrasent.data.batches import Batch
from contrasent.data.spans import DocumentSpans, SpanSampler, TokenizedDocument

__all__ = ["SpanBatch", "make_span_batch"]


@dataclass
class SpanBatch(Batch):
    """``anchors[d][i]``: anchor ``i`` of document ``d``; ``positives[d][i][j]``: its positives.

    ``index`` / ``offset`` (from :class:`~contrasent.data.batches.Batch`) count documents: a
    process's slice or a gradient-cache chunk of documents moves ``offset``.
    """

    anchors: list[list[str]]
    positives: list[list[list[str]]]
    sources: list[str] = field(default_factory=list)
    """Where each document came from (``file:line``), for reports; may be empty."""
    spans: list[DocumentSpans] = field(default_factory=list)
    """The token offsets behind the texts (diagnostics: positive/anchor relations); may be empty."""
    max_span_len: int | None = field(default=None, kw_only=True)
    """The sampler's longest span in tokens (the objective checks it fits the encoder)."""
    short_documents: int = field(default=0, kw_only=True)
    """Documents skipped as too short for span sampling (per epoch; logged as a metric)."""
    ROWS = ("anchors", "positives", "sources", "spans")

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
        self.check_lengths()

    def _length(self, name: str) -> int:
        value = getattr(self, name)
        # diagnostics may be left empty: they then count as "one per document"
        return len(value) if value or name in ("anchors", "positives") else len(self)

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

    def anchor_keys(self) -> list[tuple[int, ...]]:
        """Keys of keyed per-anchor randomness (MLM masks): ``(index, global document, anchor)``,
        one per ``anchor_texts`` row, whatever slice or chunk the batch is."""
        return [
            (self.index, self.offset + d, a)
            for d in range(len(self))
            for a in range(self.num_anchors)
        ]


def make_span_batch(
    documents: Sequence[TokenizedDocument],
    sampler: SpanSampler,
    rng: np.random.Generator | Sequence[np.random.Generator],
    *,
    index: int = 0,
    offset: int = 0,
    **fields: Any,
) -> SpanBatch:
    """Sample every document's spans into one batch.

    ``rng`` is one generator drawn in document order, or one generator per document (the data
    kind keys them per document, ``keyed_rng(seed, SPANS, batch index, document)``, so a
    document's spans depend neither on the world size nor on where a run resumed). Documents
    must have passed the length filter (:meth:`SpanSampler.prepare`). ``fields``: the batch's
    other non-row fields (``short_documents``); ``max_span_len`` is the sampler's.
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
        max_span_len=sampler.config.max_span_len,
        **fields,
    )
