"""Streaming document readers for span sampling (DeCLUTR): one document a line, articles, books.

A *document* is the unit DeCLUTR samples anchor and positive spans from: spans of one document
are positives of each other, spans of other documents in the batch are negatives. Formats:

- ``"lines"``: DeCLUTR's own format, one document a line (``.txt`` or ``.txt.gz``). Empty lines
  are counted skips (``ReadStats.skipped["empty line"]``).
- ``"wikitext"``: WikiText raw dumps. A `` = Title = `` line starts a document (the title is kept
  in :attr:`Document.title`, not in the text); section headings (`` = = Section = = ``, any depth)
  and blank lines are dropped, as DeCLUTR's ``scripts/preprocess_wikitext_103.py`` drops them.
  Text before the first title is a document of its own.
- ``"book"``: a whole file is one document.
- ``"paragraphs"``: the blank-line separated blocks of a file are documents.

Why a book is one document, not its paragraphs: DeCLUTR needs ``num_anchors * max_span_len * 2``
tokens per document (2,048 with the paper's settings, 256 even with 64-token spans), and a
paragraph rarely has more than 200 words, so paragraph documents would nearly all be skipped by
the length filter; the spans of a book are also truly "from the same document". (The shared
Gutenberg copies have no blank lines at all: paragraph mode would give one document per file
anyway.) A book-length document is few samples per epoch (``num_anchors`` anchors), so
``window_words`` can cut long documents into consecutive windows of that many words, each a
document (the last, shorter window too; it may then fall to the length filter, counted).
Windows of one book in one batch are negatives of each other, as the reference already makes
the anchors of one document negatives of each other.

Text is whitespace-normalised as DeCLUTR's ``sanitize_text`` does (runs of spaces, tabs and
newlines become one space; no lowercasing). Memory: files are streamed line by line and only the
current document is held (a book is held whole while it is read; with ``window_words`` only the
current window). A document over ``max_document_chars`` is a UserError naming file:line, or a
counted skip with ``on_error="skip"``; a single line is never read into memory past
``4 * max_document_chars`` bytes (UTF-8 takes at most 4 bytes a character). Invalid UTF-8 is a
UserError naming file:line, or a counted skip (``data.lines.iter_lines``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contrasent.core.errors import UserError, where
from contrasent.data.readers import EMPTY_LINE, OnError, ReadStats, iter_lines

__all__ = [
    "DOCUMENT_FORMATS",
    "Document",
    "document_files",
    "read_documents",
]

DocumentFormat = Literal["lines", "wikitext", "book", "paragraphs"]
DOCUMENT_FORMATS: tuple[str, ...] = ("lines", "wikitext", "book", "paragraphs")
MAX_DOCUMENT_CHARS = 16_000_000  # ~13x Moby-Dick; far past what span sampling needs

# skip reasons (ReadStats.skipped keys)
EMPTY_DOCUMENT = "empty document"
LONG_DOCUMENT = "document too long"


@dataclass(frozen=True)
class Document:
    """One document: whitespace-normalised text and where it came from."""

    text: str
    source: str
    """``file:line`` of the document's first line."""
    title: str | None = None
    """WikiText: the article title."""
    window: int | None = None
    """With ``window_words``: which window of the source document (0-based)."""

    @property
    def name(self) -> str:
        """The source, with the window number when there is one (for messages)."""
        return self.source if self.window is None else f"{self.source} (window {self.window})"


def document_files(path: str | Path) -> list[Path]:
    """``path`` itself, or the ``.txt``/``.txt.gz`` files of a folder in name order."""
    p = Path(path)
    if p.is_dir():
        files = sorted(
            f for f in p.iterdir() if f.is_file() and f.name.lower().endswith((".txt", ".txt.gz"))
        )
        if not files:
            raise UserError(f"{path}: the folder has no .txt or .txt.gz files")
        return files
    if not p.exists():
        raise UserError(f"{path}: no such file or folder")
    return [p]


def read_documents(
    path: str | Path,
    fmt: DocumentFormat = "lines",
    *,
    on_error: OnError = "raise",
    stats: ReadStats | None = None,
    window_words: int | None = None,
    max_document_chars: int = MAX_DOCUMENT_CHARS,
) -> Iterator[Document]:
    """Stream the documents of a file, or of every ``.txt``/``.txt.gz`` file of a folder.

    Args:
        path: a file (``.gz`` is decompressed on the fly) or a folder of them.
        fmt: ``"lines"``, ``"wikitext"``, ``"book"`` or ``"paragraphs"`` (module docstring).
        on_error: ``"raise"`` (UserError naming file:line) or ``"skip"`` (counted) for invalid
            UTF-8 and documents over ``max_document_chars``.
        stats: counts lines, documents (``rows``) and skips by reason.
        window_words: cut every document into consecutive windows of this many words.
        max_document_chars: the most characters one document (or one line) may hold.
    """
    if fmt not in DOCUMENT_FORMATS:
        raise UserError(f"unknown document format {fmt!r}; choose one of {list(DOCUMENT_FORMATS)}")
    if window_words is not None and (not isinstance(window_words, int) or window_words < 1):
        raise UserError(f"window_words must be a positive integer or null, got {window_words!r}")
    if max_document_chars < 1:
        raise UserError(f"max_document_chars must be positive, got {max_document_chars}")
    stats = stats if stats is not None else ReadStats(str(path))
    for file in document_files(path):
        yield from _read_file(file, fmt, on_error, stats, window_words, max_document_chars)


def _read_file(
    path: Path,
    fmt: str,
    on_error: OnError,
    stats: ReadStats,
    window_words: int | None,
    max_chars: int,
) -> Iterator[Document]:
    lines = iter_lines(path, stats, on_error, max_line_bytes=4 * max_chars)
    doc: _Builder | None = None
    for event, lineno, value in _segments(lines, fmt, stats):
        if event == "text":
            assert doc is not None
            yield from doc.add(value or "")
            continue
        if doc is not None:  # a new document or the end of one: the current one is done
            yield from doc.finish()
            doc = None
        if event == "start":
            doc = _Builder(where(path, lineno), value, window_words, max_chars, on_error, stats)
    if doc is not None:
        yield from doc.finish()


def _segments(
    lines: Iterator[tuple[int, str]], fmt: str, stats: ReadStats
) -> Iterator[tuple[str, int, str | None]]:
    """``("start", line, title)`` where a document starts, ``("text", line, text)`` for its
    lines and, where a document is known to be complete (one-a-line), ``("end", line, None)``."""
    started = False
    for lineno, line in lines:
        text = line.strip()
        if fmt == "lines":
            if not text:
                stats.skip(EMPTY_LINE)
                continue
            yield "start", lineno, None
            yield "text", lineno, text
            yield "end", lineno, None
            continue
        if fmt == "paragraphs":
            if not text:
                started = False
                continue
            if not started:
                started = True
                yield "start", lineno, None
        elif fmt == "book":
            if not text:
                continue
            if not started:
                started = True
                yield "start", lineno, None
        else:  # wikitext
            if not text or _is_section_heading(text):
                continue
            title = _title(text)
            if title is not None or not started:
                started = True
                yield "start", lineno, title
                if title is not None:
                    continue
        yield "text", lineno, text


def _is_section_heading(text: str) -> bool:
    return text.startswith("= = ") and text.endswith(" = =")


def _title(text: str) -> str | None:
    """The title of a `` = Title = `` line (already stripped), else None."""
    if text.startswith("= ") and text.endswith(" =") and len(text) > 4:
        return text[2:-2].strip()
    return None


class _Builder:
    """Collects one document's lines; yields it (or its windows) as Documents."""

    def __init__(
        self,
        source: str,
        title: str | None,
        window_words: int | None,
        max_chars: int,
        on_error: OnError,
        stats: ReadStats,
    ) -> None:
        self.source, self.title = source, title
        self.window_words, self.max_chars = window_words, max_chars
        self.on_error, self.stats = on_error, stats
        self.parts: list[str] = []  # normalised lines (whole-document mode)
        self.words: list[str] = []  # pending words (window mode)
        self.chars = 0
        self.windows = 0
        self.too_long = False

    def add(self, text: str) -> Iterator[Document]:
        if self.too_long:
            return
        if self.window_words is not None:
            self.words.extend(text.split())
            while len(self.words) >= self.window_words:
                yield self._window(self.words[: self.window_words])
                del self.words[: self.window_words]
            return
        self.chars += len(text) + 1
        if self.chars > self.max_chars:
            if self.on_error != "skip":
                raise UserError(
                    f"{self.source}: document longer than {self.max_chars} characters; cut it "
                    "into windows with window_words, raise max_document_chars, or set "
                    "on_error: skip to count and skip such documents"
                )
            self.too_long, self.parts = True, []
            return
        self.parts.append(" ".join(text.split()))

    def _window(self, words: list[str]) -> Document:
        self.windows += 1
        self.stats.rows += 1
        return Document(" ".join(words), self.source, self.title, self.windows - 1)

    def finish(self) -> Iterator[Document]:
        if self.too_long:
            self.stats.skip(LONG_DOCUMENT)
            return
        if self.window_words is not None:
            if self.words:
                yield self._window(self.words)
            elif not self.windows:
                self.stats.skip(EMPTY_DOCUMENT)
            return
        text = " ".join(p for p in self.parts if p)
        if not text:
            self.stats.skip(EMPTY_DOCUMENT)
            return
        self.stats.rows += 1
        yield Document(text, self.source, self.title)
