"""Streaming readers: one text a line (.txt), and texts or pairs from named columns of TSV, CSV,
JSONL and Parquet files, ``datasets.save_to_disk`` folders, ``hf:`` dataset ids and data passed
from Python (the last four through :mod:`contrasent.data.sources`).

Every reader streams (never holds a file in memory), accepts a `.gz` twin of each format, and
treats user mistakes the project's way: a :class:`~contrasent.core.errors.UserError` naming
`file:line`, or, when the caller opts in with ``on_error="skip"``, a counted skip recorded in a
:class:`ReadStats`. Lines that carry no text (empty or whitespace-only lines, pair rows with an
empty anchor/positive/negative) are always counted skips, never errors. Texts are stripped of
surrounding whitespace.

Pair files map columns to roles with a dict such as
``{"anchor": "sentence1", "positive": "sentence2", "negative": ["hard_neg"]}``:

- TSV (tab-split, no quoting) and CSV (RFC 4180 quoting): with a header row the values are
  column names; headerless files use integer indices (``0`` or ``"0"``).
- JSONL: one JSON value a line. An object is read by key. A list, as in the 1B-pairs
  project's files (``["anchor", "positive"]`` or ``["anchor", "positive", "negative"]``), is read
  by integer index.
- Parquet, saved datasets, hf: ids and Python data: records are read by column name (an integer
  indexes the column list); null cells count as empty. A missing column names the existing ones.
- Texts (``text=True``, data.kind text): the map is ``{"text": column}``. Without one, a JSON
  string line is the text, an object/table row uses its ``text`` column (or its only column) and
  a TSV/CSV/JSON-list row its first field.
- Without a column map, rows are positional: field 0 is the anchor, field 1 the positive, and
  any further fields are negatives (headerless TSV/CSV and JSON lists only). Every row must then
  have as many fields as the first one.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from contrasent.core.errors import UserError, where
from contrasent.data.sources import Table, open_table, table_kind

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
Format = Literal["auto", "txt", "tsv", "csv", "jsonl", "parquet"]
FORMATS = ("auto", "txt", "tsv", "csv", "jsonl", "parquet")
ColumnRef = str | int
ROLES = ("anchor", "positive", "negative")

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


def read_texts(
    path: str | Path,
    on_error: OnError = "raise",
    stats: ReadStats | None = None,
    fmt: Format = "auto",
    columns: dict | None = None,
    header: bool | None = None,
) -> Iterator[str]:
    """Stream the texts of ``path``, stripped: one a line of a .txt (.gz) file, else the text
    column of a JSONL/CSV/TSV/Parquet file, saved dataset or hf: id (``columns={"text": name}``,
    see the module docstring).

    Empty and whitespace-only lines/cells are counted skips (`stats.skipped`).
    """
    stats = stats if stats is not None else ReadStats(str(path))
    if detect_format(path, fmt) != "txt":
        for row in PairReader(path, columns, fmt, header, on_error, text=True).rows(stats):
            yield row[0]
        return
    for _, line in iter_lines(path, stats, on_error):
        text = line.strip()
        if not text:
            stats.skip(EMPTY_LINE)
            continue
        stats.rows += 1
        yield text


@dataclass(frozen=True)
class ColumnMap:
    """Which column (name or index) plays each role; `negatives` may be empty."""

    anchor: ColumnRef
    positive: ColumnRef | None  # None: a text map ({"text": column}), anchor is the text
    negatives: tuple[ColumnRef, ...] = ()

    @property
    def refs(self) -> tuple[ColumnRef, ...]:
        if self.positive is None:
            return (self.anchor,)
        return (self.anchor, self.positive, *self.negatives)

    @property
    def uses_names(self) -> bool:
        return any(isinstance(_as_index(r), str) for r in self.refs)

    @classmethod
    def parse(cls, columns: dict | None, source: str) -> ColumnMap | None:
        """Check a user column map ({"anchor", "positive", "negative"} -> column(s))."""
        if columns is None:
            return None
        if not isinstance(columns, dict):
            raise UserError(f"{source}: columns must be a mapping role -> column, got {columns!r}")
        unknown = sorted(set(columns) - set(ROLES) - {"negatives"})
        if unknown:
            raise UserError(f"{source}: unknown column role(s) {unknown}; roles are {list(ROLES)}")
        for role in ("anchor", "positive"):
            if role not in columns:
                raise UserError(f"{source}: columns needs a {role!r} entry")
            if not isinstance(columns[role], (str, int)) or isinstance(columns[role], bool):
                raise UserError(f"{source}: columns.{role} must be one column name or index")
        negs = columns.get("negative", columns.get("negatives", []))
        negs = [negs] if isinstance(negs, (str, int)) else negs
        if not isinstance(negs, (list, tuple)) or not all(
            isinstance(n, (str, int)) and not isinstance(n, bool) for n in negs
        ):
            raise UserError(f"{source}: columns.negative must be a column or a list of columns")
        refs = (columns["anchor"], columns["positive"], *negs)
        return cls(*(_as_index(r) for r in refs[:2]), tuple(_as_index(r) for r in refs[2:]))

    @classmethod
    def parse_text(cls, columns: dict | str | None, source: str) -> ColumnMap | None:
        """Check a text column map ({"text": column}; a bare column name is accepted)."""
        if columns is None:
            return None
        if isinstance(columns, (str, int)) and not isinstance(columns, bool):
            columns = {"text": columns}
        if not isinstance(columns, dict) or set(columns) != {"text"}:
            raise UserError(f"{source}: texts take one column: {{text: COLUMN}}, got {columns!r}")
        ref = columns["text"]
        if not isinstance(ref, (str, int)) or isinstance(ref, bool):
            raise UserError(f"{source}: columns.text must be one column name or index")
        return cls(_as_index(ref), None)


def _as_index(ref: ColumnRef) -> ColumnRef:
    """Integer-like references ("0", 0) become ints; names stay strings."""
    if isinstance(ref, int):
        return ref
    return int(ref) if ref.strip().isdigit() else ref


class PairReader:
    """Streams `(anchor, positive, *negatives)` tuples (``text=True``: 1-tuples of a text) from
    one TSV/CSV/JSONL file (or .gz), Parquet file, saved dataset, hf: id or Python data.

    Args:
        path: the file.
        columns: role -> column map (see the module docstring), or None for positional rows.
        fmt: "auto" (from the suffix) or the format.
        header: whether the first TSV/CSV line names the columns. None: True when `columns`
            uses names, False when it is None or uses indices.
        on_error: "raise" (UserError with file:line) or "skip" (counted skip) for malformed rows
            and invalid UTF-8.
        text: read one text a row (``columns`` is then ``{"text": column}``).
    """

    def __init__(
        self,
        path: str | Path,
        columns: dict | None = None,
        fmt: Format = "auto",
        header: bool | None = None,
        on_error: OnError = "raise",
        text: bool = False,
    ) -> None:
        self.path = str(path)
        self.fmt = detect_format(path, fmt)
        self.text = text
        if self.fmt == "txt" and not text:
            raise UserError(f"{path}: a .txt file holds single texts, not pairs; use TSV/CSV/JSONL")
        parse = ColumnMap.parse_text if text else ColumnMap.parse
        self.columns = parse(columns, f"{path} (columns)")
        uses_names = self.columns is not None and self.columns.uses_names
        self.header = uses_names if header is None else header
        if self.fmt in ("tsv", "csv") and uses_names and not self.header:
            raise UserError(f"{path}: header is false, so columns must be integer indices")
        self.on_error = on_error
        self.num_fields: int | None = None if self.columns is None else len(self.columns.refs)
        self._indices: list[int] | None = None  # header names resolved to positions
        self.empty = EMPTY_TEXT if text else EMPTY_FIELD
        self.table: Table | None = None
        self._names: list[str] | None = None  # the table columns read, in role order
        if self.fmt in ("parquet", "table"):
            self.table = open_table(path, "parquet" if self.fmt == "parquet" else "auto")
            self._names = self._table_names(self.table)
            self.num_fields = len(self._names) if self._names else None

    def _table_names(self, table: Table) -> list[str] | None:
        """The columns of ``table`` read for the roles, checked to exist (ints index them)."""
        cols = table.columns
        if self.columns is None:
            if not self.text:
                if cols:
                    raise UserError(
                        f"{self.path}: give data.columns (anchor, positive[, negative]) for its "
                        f"columns: {', '.join(cols)}"
                    )
                return None  # rows passed from Python as tuples: positional
            if not cols:
                return None  # plain strings
            refs: list[ColumnRef] = ["text" if "text" in cols or len(cols) != 1 else cols[0]]
        else:
            refs = list(self.columns.refs)
        names = []
        for ref in refs:
            if isinstance(ref, int):
                if ref >= len(cols):
                    raise UserError(f"{self.path}: column index {ref} but it has {len(cols)}")
                ref = cols[ref]
            names.append(str(ref))
        table.require(names)
        return names

    @property
    def num_negatives(self) -> int | None:
        """Negative columns per row; known after the first row when rows are positional."""
        return None if self.num_fields is None else self.num_fields - 2

    def check(self) -> None:
        """Validate the header and the first rows now (before training): raises UserError."""
        rows = self.rows()
        next(rows, None)
        rows.close()

    def rows(self, stats: ReadStats | None = None) -> Iterator[tuple[str, ...]]:
        """Stream the rows; skips and errors are counted in `stats`."""
        stats = stats if stats is not None else ReadStats(self.path)
        if self.table is not None:
            records = self._source_records
        else:
            records = self._json_records if self.fmt == "jsonl" else self._table_records
        for lineno, fields in records(stats):
            row = self._select(fields, lineno, stats) if fields is not None else None
            if row is None:
                continue
            if not all(row):
                stats.skip(self.empty)
                continue
            stats.rows += 1
            yield row

    # -- record sources: (line number, list of raw fields or dict) ---------------------------

    def _bad(self, stats: ReadStats, lineno: int, message: str) -> None:
        if self.on_error == "skip":
            stats.skip(BAD_ROW)
            return
        raise UserError(f"{where(self.path, lineno)}: {message} (set on_error: skip to skip)")

    def _source_records(self, stats: ReadStats) -> Iterator[tuple[int, list | dict | None]]:
        assert self.table is not None
        for n, rec in self.table.records(self._names):
            stats.lines += 1
            if isinstance(rec, dict) and self._names:
                yield n, [rec.get(c) for c in self._names]  # already in role order
            elif isinstance(rec, str) or rec is None:
                yield n, [rec]  # None: an empty row, counted below
            elif isinstance(rec, (list, tuple)):
                yield n, list(rec)
            else:
                self._bad(stats, n, f"expected a text, a tuple or a mapping, got {rec!r:.60}")
                yield n, None

    def _table_records(self, stats: ReadStats) -> Iterator[tuple[int, list[str] | None]]:
        lines = iter_lines(self.path, stats, self.on_error, keepends=self.fmt == "csv")
        if self.fmt == "tsv":
            records = ((n, line.split("\t")) for n, line in lines)
        else:
            records = self._csv_records(lines, stats)
        width: int | None = None
        for lineno, fields in records:
            if fields is None:
                yield lineno, None
                continue
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                stats.skip(EMPTY_LINE)
                continue
            if width is None:
                width = len(fields)
                if self.header:
                    self._resolve_header(fields, lineno)
                    continue
                self._check_width(width, lineno)
            if len(fields) != width:
                what = "the header" if self.header else "the first row"
                self._bad(
                    stats, lineno, f"expected {width} columns like {what}, found {len(fields)}"
                )
                yield lineno, None
                continue
            yield lineno, fields

    def _csv_records(self, lines, stats: ReadStats) -> Iterator[tuple[int, list[str] | None]]:
        current = [0]

        def tracked():
            for n, line in lines:
                current[0] = n
                yield line

        reader = csv.reader(tracked())
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                self._bad(stats, current[0], f"malformed CSV ({e})")
                yield current[0], None
                continue
            yield current[0], fields

    def _json_records(self, stats: ReadStats) -> Iterator[tuple[int, list | dict | None]]:
        for lineno, line in iter_lines(self.path, stats, self.on_error):
            if not line.strip():
                stats.skip(EMPTY_LINE)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                self._bad(stats, lineno, f"invalid JSON ({e.msg} at column {e.colno})")
                yield lineno, None
                continue
            if isinstance(obj, str) and self.text:
                obj = [obj]  # a JSON string line is the text
            if not isinstance(obj, (list, dict)):
                self._bad(
                    stats, lineno, f"expected a JSON object or list, got {type(obj).__name__}"
                )
                yield lineno, None
                continue
            if isinstance(obj, dict) and self.columns is None and self.text:
                self.columns = ColumnMap("text", None)
            if isinstance(obj, dict) and self.columns is None:
                raise UserError(
                    f"{where(self.path, lineno)}: rows are JSON objects; give columns, e.g. "
                    '{"anchor": "query", "positive": "answer"}'
                )
            yield lineno, obj

    # -- column resolution ---------------------------------------------------------------------

    def _resolve_header(self, names: list[str], lineno: int) -> None:
        names = [n.strip() for n in names]
        if self.columns is None:
            return  # positional rows; the header only gets skipped
        refs = []
        for ref in self.columns.refs:
            if isinstance(ref, int):
                refs.append(ref)
            elif ref in names:
                refs.append(names.index(ref))
            else:
                raise UserError(
                    f"{where(self.path, lineno)}: column {ref!r} is not in the header "
                    f"(columns: {', '.join(names)})"
                )
        self._indices = refs
        self._check_width(len(names), lineno)

    def _check_width(self, width: int, lineno: int) -> None:
        """Fail early when an index points past the row (a config error, never skipped)."""
        if self.columns is None:
            if self.text:
                return
            if width < 2:
                raise UserError(
                    f"{where(self.path, lineno)}: found {width} column; pairs need at least "
                    "2 (anchor, positive)"
                )
            return
        refs = self._indices or self.columns.refs
        bad = [r for r in refs if isinstance(r, int) and r >= width]
        if bad:
            raise UserError(
                f"{where(self.path, lineno)}: column index {bad[0]} but rows have {width}"
            )

    def _select(self, fields: list | dict, lineno: int, stats: ReadStats) -> tuple[str, ...] | None:
        """The role values of one record, or None after a counted skip."""
        if isinstance(fields, dict):
            refs = [str(r) for r in self.columns.refs]  # type: ignore[union-attr]
            missing = [r for r in refs if r not in fields]
            if missing:
                self._bad(stats, lineno, f"missing key(s) {missing} (keys: {sorted(fields)})")
                return None
            values = [fields[r] for r in refs]
        elif self.text and self.columns is None:
            values = fields[:1]
        elif self.columns is None or self._names:
            if self.num_fields is None:
                self._check_width(len(fields), lineno)
                self.num_fields = len(fields)
            if len(fields) != self.num_fields:
                n = len(fields)
                self._bad(
                    stats,
                    lineno,
                    f"expected {self.num_fields} fields like the first row, found {n}",
                )
                return None
            values = fields
        else:
            indices = self._indices or self.columns.refs
            if any(isinstance(i, str) for i in indices):
                raise UserError(
                    f"{where(self.path, lineno)}: rows are JSON lists; columns must be integer indices"
                )
            if max(indices) >= len(fields):  # type: ignore[type-var]
                need = max(indices) + 1  # type: ignore[operator]
                self._bad(stats, lineno, f"row has {len(fields)} fields, columns need {need}")
                return None
            values = [fields[i] for i in indices]  # type: ignore[index]
        values = ["" if v is None else v for v in values]  # a null cell counts as empty
        if not all(isinstance(v, str) for v in values):
            kinds = sorted({type(v).__name__ for v in values if not isinstance(v, str)})
            self._bad(stats, lineno, f"expected text in every selected column, found {kinds}")
            return None
        return tuple(v.strip() for v in values)
