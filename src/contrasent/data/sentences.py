"""Sentence splitting for ``contrasent data prepare``: a splitter library behind one function,
applied to a document streamed in blocks so a book (or a 10 GB one-line dump) is never split
whole.

Splitters (``split``):

- ``syntok`` (default): rule-based segmenter (segtok's successor), no model, no download.
  Handles abbreviations (Mr., e.g., U.S.), decimals (2.5%) and already-tokenized text
  ("word ." as in the NLTK Gutenberg copies). About 30x faster than pysbd here.
- ``pysbd``: the Golden Rules segmenter (pySBD); good on abbreviations too, but it leaves
  tokenized text (" . ") unsplit: whole Gutenberg paragraphs came out as one "sentence".
- ``regex``: split after ``.``, ``!`` or ``?`` followed by whitespace, as the TSDAE walkthrough
  did with OSCAR. It breaks at every abbreviation ("Mr. | Smith").
- ``none``: the document (one line / paragraph) is the unit.

The comparison behind the default is in the closing note of issue 21 (counts on a few hundred
wiki1m and Gutenberg lines).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from contrasent.core.errors import UserError

SPLITTERS = ("syntok", "pysbd", "regex", "none")
_WS = re.compile(r"\s+")
_REGEX = re.compile(r"(?<=[.!?])\s+")


def _need(module: str) -> None:
    raise UserError(
        f"--split {module} needs the {module} package: pip install 'contrasent[prepare]'"
    )


def make_splitter(name: str, language: str = "en") -> Callable[[str], list[str]]:
    """``text -> sentences`` (stripped, non-empty) for a splitter of :data:`SPLITTERS`."""
    if name == "syntok":
        try:
            from syntok import segmenter
        except ImportError:
            _need("syntok")

        def syntok_split(text: str) -> list[str]:
            return [
                "".join(t.spacing + t.value for t in sentence).strip()
                for paragraph in segmenter.process(text)
                for sentence in paragraph
            ]

        return syntok_split
    if name == "pysbd":
        try:
            import pysbd
        except ImportError:
            _need("pysbd")
        seg = pysbd.Segmenter(language=language, clean=False)
        return lambda text: [s.strip() for s in seg.segment(text) if s.strip()]
    if name == "regex":
        return lambda text: [s for s in _REGEX.split(text.strip()) if s]
    if name == "none":
        return lambda text: [text.strip()] if text.strip() else []
    raise UserError(f"--split must be one of {', '.join(SPLITTERS)}, got {name!r}")


def normalize_space(text: str) -> str:
    """Runs of whitespace (line breaks of a wrapped book too) become one space."""
    return _WS.sub(" ", text).strip()


def split_stream(
    pieces: Iterable[str], split: Callable[[str], list[str]], block_chars: int = 20_000
) -> Iterator[str]:
    """The sentences of one document given as pieces (its lines), in bounded memory.

    Pieces are joined (whitespace-normalised) into blocks of about ``block_chars``; each block
    is split and its last sentence, possibly cut by the block end, is carried into the next
    block. Memory: one block plus the carried sentence (a sentence longer than a block is cut
    at 4 blocks, as no training sentence is that long).
    """
    carry, buf, size = "", [], 0
    for piece in pieces:
        piece = normalize_space(piece)
        if not piece:
            continue
        buf.append(piece)
        size += len(piece) + 1
        if size >= block_chars:
            sentences = split(" ".join([carry, *buf]).strip())
            buf, size = [], 0
            carry = sentences.pop() if sentences else ""
            if len(carry) > 4 * block_chars:
                sentences.append(carry)
                carry = ""
            yield from sentences
    rest = " ".join([carry, *buf]).strip()
    if rest:
        yield from split(rest)
