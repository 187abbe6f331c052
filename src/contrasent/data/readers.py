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
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from contrasent.core.errors import UserError, where
from contrasent.data.lines import (
    BAD_ROW,
    BAD_UTF8,
    EMPTY_FIELD,
    EMPTY_LINE,
    EMPTY_TEXT,
    FORMATS,
    LONG_LINE,
    REPLACED,
    Format,
    OnError,
    ReadStats,
    detect_format,
    iter_lines,
    numbered_lines,
    open_binary,
)
from contrasent.data.sources import Table, open_table

# The line layer's names stay importable from here (callers import them from readers).
__all__ = [
    "BAD_ROW",
    "BAD_UTF8",
    "EMPTY_FIELD",
    "EMPTY_LINE",
    "EMPTY_TEXT",
    "FORMATS",
    "LONG_LINE",
    "REPLACED",
    "ROLES",
    "ColumnMap",
    "Format",
    "OnError",
    "PairReader",
    "ReadStats",
    "detect_format",
    "iter_lines",
    "open_binary",
    "read_texts",
]

ColumnRef = str | int
ROLES = ("anchor", "positive", "negative")


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
    for _, text in numbered_lines(path, on_error, stats):
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
