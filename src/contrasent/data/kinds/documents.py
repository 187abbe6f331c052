"""The ``documents`` data kind: DeCLUTR span batches streamed from long documents.

A global batch holds ``train.batch_size`` documents (the reference's ``batch_size``: 4 per GPU),
each with ``num_anchors`` anchor spans and ``num_positives`` positives per anchor
(:class:`~contrasent.data.span_batch.SpanBatch`). Per epoch:

1. the files of ``data.path`` are read as documents (:func:`~contrasent.data.documents.
   read_documents`: one a line, WikiText articles, books, paragraphs; optional word windows),
   tokenized with the model's tokenizer (the very text and tokenizer the sampler uses, so the
   length filter cannot disagree with it, the reference's users' most common failure), and
   documents shorter than ``num_anchors * max_span_len * 2`` tokens are skipped and COUNTED
   (``ReadStats.skipped["document too short"]``, the batch's ``short_documents``, which the
   objective logs as a metric); when none is left, one UserError names the shortest and longest
   lengths found and the span settings that would admit them;
2. documents are shuffled with a buffer of ``data.shuffle_buffer`` (keyed per epoch) and batched;
   a buffer smaller than the scan's document count is a logged warning (the reference shuffles
   the whole file; without a scan the count is not known before training);
3. each document's spans are drawn from ``keyed_rng(seed, SPANS, batch index, document)``: the
   same spans whatever the number of processes or the gradient-cache chunking, and after any
   resume (the stream fast-forwards by re-reading the epoch without sampling).

With ``data.scan`` (default) a first pass before training checks every file, counts the usable
documents (``steps_per_epoch``) and, when the corpus has at most ``cache_tokens`` tokens, keeps
the token ids (int32) in memory so later epochs and resumes do not tokenize again. Larger
corpora are streamed every epoch, holding only the shuffle buffer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from contrasent.core.errors import UserError
from contrasent.core.rng import keyed_rng
from contrasent.data.documents import (
    MAX_DOCUMENT_CHARS,
    DocumentFormat,
    document_files,
    read_documents,
)
from contrasent.data.readers import ReadStats
from contrasent.data.registry import DataKind, DataSpec, epoch_stream
from contrasent.data.span_batch import SpanBatch, make_span_batch
from contrasent.data.spans import LengthStats, SpanConfig, SpanSampler, TokenizedDocument
from contrasent.data.streams import EpochStream, RowSource

log = logging.getLogger(__name__)

__all__ = ["SHORT_DOCUMENT", "SPANS", "DocumentOptions", "build_documents_stream"]

SPANS = 0x7370616E  # key of the span draws, apart from every other keyed draw
SHORT_DOCUMENT = "document too short"  # ReadStats skip reason
_NO_LIMIT = 1_000_000  # tokenizers without a length report model_max_length ~1e30


@dataclass
class DocumentOptions:
    """Options of data.kind documents (DeCLUTR's span sampling).

    Attributes:
        document_format: How a file splits into documents: lines (one document a line,
            DeCLUTR's format), wikitext (a ' = Title = ' line starts an article, ' = = Sub = = '
            headings are dropped), book (a whole file is one document), paragraphs (blank-line
            blocks). One format for every data.path entry, or a list with one per entry.
        window_words: Cut every document into consecutive windows of this many words, each a
            document (more documents per epoch from books); null: whole documents.
        max_document_chars: The most characters one document may hold: a longer one (or a
            single line past 4x this in bytes) is an error naming file:line, or a counted skip
            with data.on_error skip.
        num_anchors: Anchor spans per document (reference: 2).
        num_positives: Positive spans per anchor, averaged into one vector (reference: 2).
        min_span_len: Shortest span in tokens (reference: 32).
        max_span_len: Longest span in tokens (reference: 512 with the content truncated to
            510; here it must fit the model's length with its special tokens: 510 for a
            512-position RoBERTa/BERT). Documents need num_anchors * max_span_len * 2 tokens.
        sampling_strategy: Where positives go: none (adjacent to, overlapping or inside the
            anchor: the reference's default), subsuming (inside it) or adjacent (touching it).
        span_tokens: Count span lengths in the model tokenizer's tokens (the reference's
            configs) or in whitespace words.
        cache_tokens: Keep the tokenized corpus in memory after the scan when it has at most
            this many tokens (4 bytes each), so later epochs and resumes skip tokenizing; 0:
            never (every epoch streams and tokenizes the files again).
    """

    document_format: DocumentFormat | list[DocumentFormat] = "lines"
    window_words: int | None = None
    max_document_chars: int = MAX_DOCUMENT_CHARS
    num_anchors: int = 2
    num_positives: int = 2
    min_span_len: int = 32
    max_span_len: int = 510
    sampling_strategy: Literal["none", "subsuming", "adjacent"] | None = "none"
    span_tokens: Literal["model", "whitespace"] = "model"
    cache_tokens: int = 32_000_000

    def __post_init__(self) -> None:
        try:
            self.spans.check()
        except UserError as err:  # build_options turns ValueError into one labelled line
            raise ValueError(str(err).removeprefix("declutr: ")) from None
        if self.window_words is not None and self.window_words < 1:
            raise ValueError(f"window_words must be >= 1 or null, got {self.window_words}")
        if self.max_document_chars < 1:
            raise ValueError(f"max_document_chars must be >= 1, got {self.max_document_chars}")
        if self.cache_tokens < 0:
            raise ValueError(f"cache_tokens must be >= 0, got {self.cache_tokens}")

    @property
    def spans(self) -> SpanConfig:
        return SpanConfig(
            self.num_anchors,
            self.num_positives,
            self.min_span_len,
            self.max_span_len,
            self.sampling_strategy,
            self.span_tokens,
        )

    def formats(self, paths: list[str]) -> list[str]:
        """The document format of each data.path entry."""
        if isinstance(self.document_format, str):
            return [self.document_format] * len(paths)
        if len(self.document_format) != len(paths):
            raise UserError(
                f"data.options.document_format lists {len(self.document_format)} formats for "
                f"{len(paths)} data.path entries: give one format, or one per entry"
            )
        return list(self.document_format)


def training_length(spec: DataSpec, tokenizer: Any) -> int | None:
    """The longest input training feeds the encoder: ``data.max_seq_length`` capped by the
    tokenizer's own limit (None when neither is known). The encoder's ``model.max_seq_length``
    may be lower still: the objective checks that one (it has the encoder)."""
    limit = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    known = [x for x in (spec.max_seq_length, limit) if x is not None and x < _NO_LIMIT]
    return int(min(known)) if known else None


class DocumentCorpus:
    """The documents of ``data.path``, tokenized and length-filtered, pass after pass."""

    def __init__(
        self, spec: DataSpec, options: DocumentOptions, sampler: SpanSampler, seed: int
    ) -> None:
        self.seed = seed
        self.paths, self.formats = spec.paths, options.formats(spec.paths)
        self.options, self.sampler, self.on_error = options, sampler, spec.on_error
        for path in self.paths:
            document_files(path)  # a missing file or an empty folder fails now
        more = f" (+{len(self.paths) - 1} more)" if len(self.paths) > 1 else ""
        self.name = f"{self.paths[0]}{more}"
        self.cache: list[TokenizedDocument] | None = None
        self.scan_stats: ReadStats | None = None
        self.lengths: LengthStats = sampler.lengths()  # of the pass being read (or the last)
        self.scanned: LengthStats | None = None

    @property
    def short_documents(self) -> int:
        """Documents too short per epoch (the scan's count; without a scan, so far this pass)."""
        return (self.scanned or self.lengths).too_short

    def read(self, stats: ReadStats) -> Iterator[TokenizedDocument]:
        """One pass: usable documents in file order; too short ones counted in ``stats``."""
        if self.cache is not None and self.scan_stats is not None:
            _copy_counts(self.scan_stats, stats)
            yield from self.cache
            return
        self.lengths = lengths = self.sampler.lengths()
        for path, fmt in zip(self.paths, self.formats, strict=True):
            for doc in read_documents(
                path,
                fmt,  # type: ignore[arg-type]
                on_error=self.on_error,
                stats=stats,
                window_words=self.options.window_words,
                max_document_chars=self.options.max_document_chars,
            ):
                tokens = self.sampler.prepare(doc.text, doc.name, lengths)
                if tokens is None:
                    stats.rows -= 1  # read_documents counted it as a row
                    stats.skip(SHORT_DOCUMENT)
                    continue
                yield tokens
        lengths.check(self.name)  # nothing usable: one error with the lengths found

    def scan(self) -> ReadStats:
        """A full pass before training: every check, the counts, and the cache when small."""
        stats = ReadStats(self.name)
        cache: list[TokenizedDocument] | None = []
        tokens = 0
        for doc in self.read(stats):
            tokens += len(doc)
            if cache is not None:
                if tokens <= self.options.cache_tokens:
                    cache.append(doc)
                else:
                    cache = None  # too big to hold: later passes stream the files again
        stats.report()
        log.info("%s: %s", self.name, self.lengths.summary())
        self.cache, self.scan_stats, self.scanned = cache, stats, self.lengths
        return stats

    def to_batch(
        self, rows: list[TokenizedDocument], dataset: str | None = None, *, index: int = 0
    ) -> SpanBatch:
        """Spans of every document of batch ``index``, keyed per document (module docstring)."""
        rngs = [keyed_rng(self.seed, SPANS, index, d) for d in range(len(rows))]
        return make_span_batch(
            rows, self.sampler, rngs, index=index, short_documents=self.short_documents
        )


def _copy_counts(src: ReadStats, dst: ReadStats) -> None:
    dst.rows, dst.lines = src.rows, src.lines
    dst.skipped, dst.info = dict(src.skipped), dict(src.info)


def _warn_partial_shuffle(name: str, buffer: int, documents: int) -> None:
    # The DeCLUTR reference shuffles the whole file each epoch; a smaller buffer only mixes
    # nearby documents, so a batch's documents (each other's negatives) come from one region.
    log.warning(
        "%s: data.shuffle_buffer %d is smaller than its %d documents: batches mix only nearby "
        "documents (the DeCLUTR reference shuffles the whole file); data.shuffle_buffer %d "
        "shuffles them uniformly (it holds that many tokenized documents in memory)",
        name,
        buffer,
        documents,
        documents,
    )


def build_documents_stream(
    spec: DataSpec, options: DocumentOptions, batch_size: int, seed: int, tokenizer: Any
) -> EpochStream:
    """The ``documents`` kind's builder (see the module docstring)."""
    if spec.dedup_in_batch:
        raise UserError("data.dedup_in_batch does not apply to data.kind 'documents'")
    if spec.format != "auto":
        raise UserError(
            "data.format does not apply to data.kind 'documents': set "
            "data.options.document_format (lines, wikitext, book or paragraphs)"
        )
    sampler = SpanSampler(options.spans, tokenizer, max_length=training_length(spec, tokenizer))
    corpus = DocumentCorpus(spec, options, sampler, seed)
    stats = [corpus.scan()] if spec.scan else []
    rows = stats[0].rows if stats else None
    if rows is not None and spec.shuffle_buffer < rows:
        _warn_partial_shuffle(corpus.name, spec.shuffle_buffer, rows)
    source = RowSource(corpus.name, corpus.read, spec.shuffle_buffer, seed, 0)
    stream = epoch_stream(spec, batch_size, seed, (source, rows, stats), corpus.to_batch)
    stream.corpus = corpus  # type: ignore[attr-defined]  (counts for reports and tests)
    return stream


KIND = DataKind(
    "documents",
    SpanBatch,
    build_documents_stream,
    options=DocumentOptions,
    summary="long documents (one a line, WikiText articles, books) -> DeCLUTR anchor and "
    "positive spans",
)
