"""DeCLUTR span sampling (Giorgi et al., 2021; ``declutr/common/contrastive_utils.py``).

From a document of ``n`` tokens, :func:`sample_spans` draws ``num_anchors`` anchor spans and, for
each anchor, ``num_positives`` positive spans, as the reference's
``sample_anchor_positive_pairs`` does (same draws in the same order, from a numpy
``Generator`` instead of numpy's global state, so that the caller can key it per document):

* Anchor length ``int(Beta(4, 2) * (max_span_len - min_span_len) + min_span_len)`` (skewed
  long), positive length the same with ``Beta(2, 4)`` (skewed short). Lengths therefore lie in
  ``[min_span_len, max_span_len]`` and reach ``max_span_len`` only when the two are equal.
* Anchor start slots are ``0, M, 2M, ...`` (``M = max_span_len``, every slot leaving ``M``
  tokens). An anchor takes a slot (uniformly; one of the two end slots when fewer than
  ``left * left`` slots remain for the ``left`` anchors still to draw), starts uniformly so that
  it ends inside its slot's ``M`` tokens, and removes its slot and both neighbours: anchors are
  disjoint, at least one free slot apart.
* Positives, by ``sampling_strategy``: ``"none"`` (the reference's default, ``None`` there):
  the start is uniform in ``[max(0, a_start - p_len), min(a_end, n - p_len)]``, so a positive
  is adjacent to the anchor (touching either end), overlaps it, lies inside it, or (when
  longer) contains it. ``"subsuming"``: length ``Beta(2, 4)`` scaled to ``[min_span_len,
  anchor_len]``, start uniform inside the anchor. ``"adjacent"``: length scaled to
  ``[min_span_len, min(M, room)]`` (``room`` the larger free side), placed right before
  (only when that leaves a token before it: the reference's ``a_start - p_len > 0``) or right
  after the anchor, uniformly among the sides that fit.

Documents need ``num_anchors * max_span_len * 2`` tokens (the reference raises ``ValueError`` on
the first shorter one; here :class:`SpanSampler.prepare` counts and skips them, and
:meth:`LengthStats.check` raises one UserError when none is left). Tokens are the model
tokenizer's (the reference's training configs: ``PretrainedTransformerTokenizer.tokenize``, no
special tokens, the text prefixed with a space for BPE tokenizers) or whitespace words
(``span_tokens: whitespace``, the reference's fallback ``text.split()``). A token span becomes
text as in the reference's dataset reader: ``tokenizer.decode`` of its ids followed by the
tokenizer's ``clean_up_tokenization`` (``" ,"`` -> ``","``: transformers 3.x, which the reference
ran on, did so in ``decode`` for every tokenizer; transformers 5 skips it for BPE), whitespace
words joined by a space (one deviation: a WordPiece span starting inside a word loses the "##" marker decode
leaves, which the encoder would read as two "#" tokens; BPE spans decode to the bare piece
anyway). The encoder re-tokenizes that text with its special tokens, so ``max_span_len`` plus the
special tokens must fit the model's length (checked).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from contrasent.core.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "SAMPLING_STRATEGIES",
    "SPAN_TOKENS",
    "DocumentSpans",
    "LengthStats",
    "SpanConfig",
    "SpanSampler",
    "TokenizedDocument",
    "relation_counts",
    "sample_spans",
    "span_relation",
]

SAMPLING_STRATEGIES = ("none", "subsuming", "adjacent")
SPAN_TOKENS = ("model", "whitespace")
Span = tuple[int, int]  # [start, end) token offsets
_NO_LIMIT = 1_000_000  # tokenizers without a length report model_max_length ~1e30


@dataclass(frozen=True)
class SpanConfig:
    """DeCLUTR's span settings (the reference's dataset reader options)."""

    num_anchors: int = 2
    """Anchor spans per document (reference config: 2)."""
    num_positives: int = 2
    """Positive spans per anchor (reference config: 2); their embeddings are averaged."""
    min_span_len: int = 32
    """Shortest span, in tokens (reference config: 32)."""
    max_span_len: int = 512
    """Longest span, in tokens (reference config: 512, with content truncated to 510)."""
    sampling_strategy: Literal["none", "subsuming", "adjacent"] | None = "none"
    """Where positives go: none (adjacent, overlapping or subsumed: the reference default),
    subsuming (inside the anchor) or adjacent (touching it)."""
    span_tokens: Literal["model", "whitespace"] = "model"
    """Count tokens with the model's tokenizer (the reference's configs) or whitespace. A
    whitespace span may be longer in model tokens: the encoder then truncates it."""

    def __post_init__(self) -> None:
        strategy = self.sampling_strategy
        object.__setattr__(
            self, "sampling_strategy", "none" if strategy is None else str(strategy).lower()
        )

    @property
    def min_document_tokens(self) -> int:
        """The reference's minimum document length: ``num_anchors * max_span_len * 2``."""
        return self.num_anchors * self.max_span_len * 2

    def check(self, model_max_length: int | None = None, num_special_tokens: int = 0) -> None:
        """One UserError per inconsistent setting; the model length check needs the length."""
        for name in ("num_anchors", "num_positives", "min_span_len", "max_span_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"declutr: {name} must be a positive integer, got {value!r}")
        if self.min_span_len > self.max_span_len:
            raise UserError(
                f"declutr: min_span_len ({self.min_span_len}) must be <= max_span_len "
                f"({self.max_span_len})"
            )
        if self.sampling_strategy not in SAMPLING_STRATEGIES:
            raise UserError(
                f"declutr: sampling_strategy must be one of {list(SAMPLING_STRATEGIES)}, "
                f"got {self.sampling_strategy!r}"
            )
        if self.span_tokens not in SPAN_TOKENS:
            raise UserError(
                f"declutr: span_tokens must be one of {list(SPAN_TOKENS)}, got {self.span_tokens!r}"
            )
        if (
            self.sampling_strategy == "adjacent"
            and self.num_anchors == 1
            and 2 * self.min_span_len >= self.max_span_len
        ):
            # one anchor in a document of 2 * max_span_len tokens may leave less than
            # min_span_len on both sides (the reference then fails on an empty choice)
            raise UserError(
                "declutr: sampling_strategy adjacent with num_anchors 1 needs "
                f"2 * min_span_len < max_span_len, got {self.min_span_len} and {self.max_span_len}"
            )
        if model_max_length is not None and self.max_span_len + num_special_tokens > (
            model_max_length
        ):
            raise UserError(
                f"declutr: max_span_len ({self.max_span_len}) plus {num_special_tokens} special "
                f"tokens exceeds the model's maximum length {model_max_length}; use "
                f"max_span_len <= {model_max_length - num_special_tokens}"
            )


@dataclass(frozen=True)
class DocumentSpans:
    """Token offsets ``[start, end)`` of one document's anchors and their positives."""

    anchors: tuple[Span, ...]
    positives: tuple[tuple[Span, ...], ...]
    """``positives[i]`` are the ``num_positives`` positives of ``anchors[i]``."""


def _scaled_beta(rng: np.random.Generator, a: float, b: float, low: int, high: int) -> int:
    """The reference's span length: ``int(Beta(a, b) * (high - low) + low)``."""
    return int(rng.beta(a, b) * (high - low) + low)


def sample_spans(num_tokens: int, config: SpanConfig, rng: np.random.Generator) -> DocumentSpans:
    """Anchors and positives of a document of ``num_tokens`` tokens (module docstring).

    Raises ValueError for a document shorter than ``config.min_document_tokens`` (callers
    filter those first: :meth:`SpanSampler.prepare`).
    """
    if num_tokens < config.min_document_tokens:
        raise ValueError(
            f"a document of {num_tokens} tokens is shorter than the "
            f"{config.min_document_tokens} that span sampling needs"
        )
    big, small = config.max_span_len, config.min_span_len
    slots = list(range(0, num_tokens - big + 1, big))
    anchors: list[Span] = []
    positives: list[tuple[Span, ...]] = []
    for i in range(config.num_anchors):
        length = _scaled_beta(rng, 4, 2, small, big)
        left = config.num_anchors - i
        if len(slots) // left < left:  # few slots left: an end slot removes only 2
            k = (0, len(slots) - 1)[int(rng.integers(2))]
        else:
            k = int(rng.integers(len(slots)))
        start = int(rng.integers(slots[k], slots[k] + big - length + 1))
        del slots[max(0, k - 1) : k + 2]
        anchor = (start, start + length)
        anchors.append(anchor)
        positives.append(
            tuple(_positive(anchor, num_tokens, config, rng) for _ in range(config.num_positives))
        )
    return DocumentSpans(tuple(anchors), tuple(positives))


def _positive(anchor: Span, n: int, config: SpanConfig, rng: np.random.Generator) -> Span:
    a_start, a_end = anchor
    big, small = config.max_span_len, config.min_span_len
    if config.sampling_strategy == "subsuming":
        length = _scaled_beta(rng, 2, 4, small, a_end - a_start)
        start = int(rng.integers(a_start, a_end - length + 1))
    elif config.sampling_strategy == "adjacent":
        room = min(big, max(a_start, n - a_end))
        length = _scaled_beta(rng, 2, 4, small, room)
        starts = []
        if a_start - length > 0:  # the reference's strict test: a token stays before it
            starts.append(a_start - length)
        if a_end + length <= n:
            starts.append(a_end)
        if not starts:  # excluded by SpanConfig.check
            raise RuntimeError(f"no room for an adjacent positive of {length} at {anchor}")
        start = starts[int(rng.integers(len(starts)))]
    else:
        length = _scaled_beta(rng, 2, 4, small, big)
        start = int(rng.integers(max(0, a_start - length), min(a_end, n - length) + 1))
    return start, start + length


def span_relation(anchor: Span, positive: Span) -> str:
    """How a positive sits against its anchor: ``subsumed`` (inside it, or equal),
    ``subsuming`` (contains it, longer), ``adjacent`` (touching, no shared token),
    ``overlapping`` (shares tokens, neither contains the other) or ``disjoint``."""
    (a0, a1), (p0, p1) = anchor, positive
    if a0 <= p0 and p1 <= a1:
        return "subsumed"
    if p0 <= a0 and a1 <= p1:
        return "subsuming"
    if p1 == a0 or p0 == a1:
        return "adjacent"
    if p0 < a1 and a0 < p1:
        return "overlapping"
    return "disjoint"


@dataclass(frozen=True)
class TokenizedDocument:
    """A document's tokens (model ids as int32, or whitespace words) and where it came from."""

    tokens: np.ndarray | list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.tokens)


class LengthStats:
    """Counts of the length filter: documents seen, skipped as too short, length range."""

    def __init__(self, config: SpanConfig, unit: str = "model") -> None:
        self.config, self.unit = config, unit
        self.seen = self.too_short = 0
        self.shortest: int | None = None
        self.longest: int | None = None

    def add(self, num_tokens: int) -> bool:
        """Record one document; True when it is long enough."""
        self.seen += 1
        self.shortest = num_tokens if self.shortest is None else min(self.shortest, num_tokens)
        self.longest = num_tokens if self.longest is None else max(self.longest, num_tokens)
        if num_tokens < self.config.min_document_tokens:
            self.too_short += 1
            return False
        return True

    @property
    def usable(self) -> int:
        return self.seen - self.too_short

    def summary(self) -> str:
        if not self.seen:
            return "no documents"
        return (
            f"{self.usable} of {self.seen} documents long enough for span sampling, "
            f"{self.too_short} skipped as shorter than {self.config.min_document_tokens} "
            f"{self.unit} tokens (lengths {self.shortest} to {self.longest})"
        )

    def check(self, what: str) -> None:
        """UserError when no document is usable, naming the lengths and settings that fit."""
        if not self.seen:
            raise UserError(f"{what}: no documents to sample spans from (the input is empty)")
        if self.usable:
            return
        c = self.config
        raise UserError(
            f"{what}: no document is long enough for span sampling: {self.seen} documents of "
            f"{self.shortest} to {self.longest} {self.unit} tokens, and num_anchors "
            f"{c.num_anchors} * max_span_len {c.max_span_len} * 2 needs {c.min_document_tokens}; "
            f"{_admitting(self.longest or 0, c)} would admit the longest document, "
            f"{_admitting(self.shortest or 0, c)} every document"
        )


def _admitting(length: int, config: SpanConfig) -> str:
    """The span settings under which a document of `length` tokens passes the filter."""
    best = length // (2 * config.num_anchors)
    if best >= 1:
        text = f"max_span_len <= {best}"
        if config.min_span_len > best:
            text += f" with min_span_len <= {best}"
        return text
    if length >= 2:
        return f"num_anchors 1 with max_span_len <= {length // 2}"
    return f"no setting ({length} tokens)"


class SpanSampler:
    """Tokenizes documents, filters them by length and samples their span texts.

    Args:
        config: the span settings (checked here, with the model length when known).
        tokenizer: the model's (HF) tokenizer; required with ``span_tokens: model``. With
            whitespace spans it only supplies the special-token count for the length check.
        max_length: the encoder's maximum sequence length (special tokens included); None:
            the tokenizer's ``model_max_length`` when it states one.
    """

    def __init__(
        self, config: SpanConfig, tokenizer: Any = None, max_length: int | None = None
    ) -> None:
        if config.span_tokens == "model" and tokenizer is None:
            raise UserError("declutr: span_tokens 'model' needs the model's tokenizer")
        self.config, self.tokenizer = config, tokenizer
        if max_length is None and tokenizer is not None:
            limit = getattr(tokenizer, "model_max_length", None)
            max_length = int(limit) if limit is not None and limit < _NO_LIMIT else None
        specials = 0 if tokenizer is None else tokenizer.num_special_tokens_to_add(pair=False)
        config.check(max_length, specials)
        self.max_length, self.num_special_tokens = max_length, specials

    @classmethod
    def from_encoder(cls, config: SpanConfig, encoder: Any) -> SpanSampler:
        """A sampler over a contrasent Encoder's tokenizer and ``max_seq_length``."""
        return cls(config, encoder.tokenizer, encoder.max_seq_length)

    def tokenize(self, text: str, source: str = "") -> TokenizedDocument:
        if self.config.span_tokens == "whitespace":
            return TokenizedDocument(text.split(), source)
        # the leading space makes a BPE tokenizer (RoBERTa) treat the first word like every
        # other word, as the reference does; verbose=False: long documents are expected here
        ids = self.tokenizer(" " + text.lstrip(), add_special_tokens=False, verbose=False)
        return TokenizedDocument(np.asarray(ids["input_ids"], dtype=np.int32), source)

    def prepare(
        self, text: str, source: str = "", lengths: LengthStats | None = None
    ) -> TokenizedDocument | None:
        """The tokenized document, or None (counted in ``lengths``) when it is too short."""
        doc = self.tokenize(text, source)
        ok = len(doc) >= self.config.min_document_tokens
        if lengths is not None:
            ok = lengths.add(len(doc))
        return doc if ok else None

    def text(self, doc: TokenizedDocument, span: Span) -> str:
        start, end = span
        if self.config.span_tokens == "whitespace":
            return " ".join(doc.tokens[start:end])
        ids = doc.tokens[start:end].tolist()  # type: ignore[union-attr]
        # The reference decoded with transformers 3.x, whose decode cleaned up tokenization
        # spaces (" ," -> ",") for every tokenizer; transformers 5 skips that for BPE, so apply
        # it here: the same text on every version.
        text = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        text = self.tokenizer.clean_up_tokenization(text)
        # A WordPiece span may start inside a word: decode keeps the "##" marker, which the
        # encoder would read as two "#" tokens. Drop it (a BPE span, as the reference's
        # RoBERTa, decodes to the bare word piece anyway).
        first = self.tokenizer.convert_ids_to_tokens(ids[0]) if ids else ""
        if text.startswith("##") and first.startswith("##"):
            text = text[2:]
        return text

    def sample(
        self, doc: TokenizedDocument, rng: np.random.Generator
    ) -> tuple[list[str], list[list[str]], DocumentSpans]:
        """``(anchor texts, positive texts per anchor, the token spans)`` of one document."""
        spans = sample_spans(len(doc), self.config, rng)
        anchors = [self.text(doc, a) for a in spans.anchors]
        positives = [[self.text(doc, p) for p in group] for group in spans.positives]
        return anchors, positives, spans

    def lengths(self) -> LengthStats:
        """A fresh length filter for this sampler's settings."""
        return LengthStats(self.config, self.config.span_tokens)


def relation_counts(spans: Sequence[DocumentSpans]) -> dict[str, int]:
    """How many positives are subsumed / subsuming / adjacent / overlapping (diagnostics)."""
    counts: dict[str, int] = {}
    for doc in spans:
        for anchor, group in zip(doc.anchors, doc.positives, strict=True):
            for p in group:
                kind = span_relation(anchor, p)
                counts[kind] = counts.get(kind, 0) + 1
    return counts
