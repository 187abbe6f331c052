"""Reading input files line by line, the layer under every reader: the formats and how a path
names one (:func:`detect_format`), opening plain or gzip files, decoding each line as UTF-8 with
its number (:func:`iter_lines`: a bad byte or an over-long line raises naming ``file:line``, or is
a counted skip), and :class:`ReadStats`, the counts (rows, lines, skips by reason) every reader
reports. The row and column readers built on it are in :mod:`contrasent.data.readers`.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from contrasent.core.errors import UserError, where
from contrasent.data.sources import table_kind

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
Format = Literal["auto", "txt", "tsv", "csv", "jsonl", "parquet"]
FORMATS = ("auto", "txt", "tsv", "csv", "jsonl", "parquet")

# Skip reasons: the key kept in ReadStats.skipped and the words used when reporting it.
EMPTY_LINE = "empty line"
BAD_UTF8 = "invalid UTF-8"
BAD_ROW = "malformed row"
EMPTY_FIELD = "empty anchor/positive/negative"
EMPTY_TEXT = "empty or null text"
LONG_LINE = "line too long"
REPLACED = "replaced lines"  # ReadStats.info key of on_error="replace"


@dataclass
class ReadStats:
    """What one pass over an input produced: rows kept, lines read, skips by reason.

    `info` holds extra counts a reader wants reported (e.g. NLI label counts).
    """

    path: str
    rows: int = 0
    lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    info: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"{self.path}: {self.rows} rows from {self.lines} lines"
        if self.skipped:
            parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
            text += f", skipped {self.total_skipped} ({parts})"
        if self.info:
            text += " [" + ", ".join(f"{k}: {v}" for k, v in self.info.items()) + "]"
        return text

    def report(self, level: int = logging.INFO) -> None:
        log.log(level, "%s", self.summary())


def detect_format(path: str | Path, fmt: Format = "auto") -> str:
    """The file format: `fmt` unless "auto", else from the suffix (ignoring a trailing .gz)."""
    if fmt != "auto":
        return fmt
    if table_kind(path) is not None:
        return "table"  # parquet, a saved dataset folder, hf:, memory:
    name = str(path).lower()
    name = name.removesuffix(".gz")
    for suffix, found in ((".txt", "txt"), (".tsv", "tsv"), (".csv", "csv"), (".jsonl", "jsonl")):
        if name.endswith(suffix):
            return found
    if name.endswith(".json"):
        return "jsonl"
    raise UserError(
        f"{path}: cannot tell the format from the file name; "
        "use .txt, .tsv, .csv, .jsonl (optionally .gz) or .parquet, a datasets.save_to_disk "
        "folder or hf:org/name, or set data.format"
    )


def open_binary(path: str | Path):
    """Open a file (a .gz one decompressed) for binary line iteration; UserError if missing."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file" if not p.exists() else f"{path}: not a file")
    return gzip.open(p, "rb") if p.name.endswith(".gz") else open(p, "rb")


def iter_lines(
    path: str | Path,
    stats: ReadStats,
    on_error: OnError | Literal["replace"] = "raise",
    keepends: bool = False,
    hint: str = "set on_error: skip to count and skip such lines",
    max_line_bytes: int | None = None,
) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, decoded_line)` (1-based), streaming; .gz is decompressed on the fly.

    Invalid UTF-8 raises a UserError naming file:line (ending with ``hint``), is a counted skip
    with ``on_error="skip"``, or with ``on_error="replace"`` is decoded with U+FFFD and counted in
    ``stats.info["replaced lines"]`` (callers that must keep every line, e.g. bulk embedding).
    A corrupt gzip stream always raises.

    ``max_line_bytes`` bounds the memory one line may take (a file without newlines would
    otherwise be read whole): a longer line is read past in chunks, never held, and is a
    UserError, or a counted skip (``LONG_LINE``) with ``on_error="skip"``.
    """
    lineno = 0
    with open_binary(path) as fh:
        lines = iter(fh) if max_line_bytes is None else _bounded_lines(fh, max_line_bytes)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
                raise UserError(f"{where(path, lineno + 1)}: cannot read ({e})") from e
            lineno += 1
            stats.lines += 1
            if raw is None:  # longer than max_line_bytes
                if on_error == "skip":
                    stats.skip(LONG_LINE)
                    continue
                raise UserError(
                    f"{where(path, lineno)}: line longer than {max_line_bytes} bytes; split the "
                    "file into lines or set on_error: skip to count and skip such lines"
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if on_error == "skip":
                    stats.skip(BAD_UTF8)
                    continue
                if on_error != "replace":
                    raise UserError(
                        f"{where(path, lineno)}: invalid UTF-8 (byte {e.start} of the line: "
                        f"{raw[e.start : e.start + 4]!r}); fix the file or {hint}"
                    ) from None
                text = raw.decode("utf-8", errors="replace")
                stats.info[REPLACED] = stats.info.get(REPLACED, 0) + 1
            if lineno == 1:
                text = text.removeprefix("\ufeff")  # a BOM is not part of the first text
            yield lineno, (text if keepends else text.rstrip("\r\n"))


def _bounded_lines(fh, limit: int) -> Iterator[bytes | None]:
    """Raw lines of a binary file, None in place of a line longer than `limit` bytes."""
    while True:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        if len(raw) <= limit or (len(raw) == limit + 1 and raw.endswith(b"\n")):
            yield raw
            continue
        while raw and not raw.endswith(b"\n"):  # read past the rest of the line
            raw = fh.readline(1 << 20)
        yield None


def numbered_lines(
    path: str | Path, on_error: OnError, stats: ReadStats
) -> Iterator[tuple[int, str]]:
    """``(line number from 0, stripped text)`` of the non-empty lines of a text file (empty
    and whitespace-only lines are counted skips; each yielded line counts as a row)."""
    for lineno, line in iter_lines(path, stats, on_error):
        text = line.strip()
        if not text:
            stats.skip(EMPTY_LINE)
            continue
        stats.rows += 1
        yield lineno - 1, text
