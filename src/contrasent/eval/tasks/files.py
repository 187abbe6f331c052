"""Shared pieces of the file-based tasks: reading task files and embedding their texts.

Files are plain or gzip (``.gz``), UTF-8 (a BOM is dropped). Tables have a header line; columns
are found by header name (case-insensitive) or through an explicit ``columns`` mapping
``{"sentence1": "question", ...}``. ``.tsv`` is split on tabs only (no quoting: quotes are part of
the text, as in MRPC or SentEval files); ``.csv`` follows the csv module's quoting. Every bad line
raises :class:`UserError` naming ``path:line``.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import UserError, finite_number, where

Encode = Callable[[list[str]], Any]
TABLE_SUFFIXES = (".tsv", ".csv")
JSONL_SUFFIXES = (".jsonl",)


# ----------------------------------------------------------------------------- names and lines
def base_name(path: Path) -> str:
    """The file name without ``.gz``: what decides the format."""
    name = path.name
    return name[:-3] if name.endswith(".gz") else name


def stem(path: Path) -> str:
    """Default task name: the file (or folder) name without ``.gz`` and its format suffix."""
    name = base_name(path)
    for suffix in (*TABLE_SUFFIXES, *JSONL_SUFFIXES, ".json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, text without the line ending) of a plain or gzip file.

    Lines are decoded one at a time so a bad byte is reported on its own line; lines are split on
    ``\\n`` only (str.splitlines would also split inside texts on U+2028, U+0085, ...).
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                yield number, _decode(raw, path, number)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut gzip is EOFError
        raise UserError(f"{where(path)}: cannot read ({e})") from None


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where(path, number)}: not valid UTF-8 ({e.reason})") from None
    return text.rstrip("\n").removesuffix("\r")


# ----------------------------------------------------------------------------- tables
def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    lines = read_lines(path)
    if base_name(path).endswith(".csv"):
        # csv needs the line endings back to see quoted newlines; line_num counts physical lines
        reader = csv.reader(text + "\n" for _, text in lines)
        for fields in reader:
            yield reader.line_num, fields
    else:
        for number, text in lines:
            yield number, text.split("\t")


def read_header(path: Path) -> list[str]:
    """The header's column names, stripped and lower-cased ([] for an empty file)."""
    for _, fields in _rows(path):
        return [f.strip().lower() for f in fields]
    return []


def table_has(path: Path, names: Sequence[str]) -> bool:
    """Whether ``path`` is a table (.tsv/.csv, maybe .gz) whose header names all of ``names``."""
    if not path.is_file() or not base_name(path).endswith(TABLE_SUFFIXES):
        return False
    return set(names) <= set(read_header(path))


def _positions(
    header: list[str], wanted: Sequence[str], columns: Mapping[str, str] | None, path: Path
) -> list[int]:
    """Index of each wanted column in the header, by name or through ``columns``."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(wanted))
    if unknown:
        raise UserError(
            f"{where(path)}: columns mapping names {', '.join(unknown)}, which this task does "
            f"not use; it reads {', '.join(wanted)}"
        )
    names = [h.strip().lower() for h in header]
    found = []
    for role in wanted:
        name = columns.get(role, role).strip().lower()
        if name not in names:
            raise UserError(
                f"{where(path, 1)}: no column {name!r} in the header; its columns are "
                f"{', '.join(repr(h) for h in header)} (rename one, or map it: "
                f"columns={{{role!r}: ...}})"
            )
        found.append(names.index(name))
    return found


def read_table(
    path: Path, wanted: Sequence[str], columns: Mapping[str, str] | None = None
) -> Iterator[tuple[int, list[str]]]:
    """(line number, values of the ``wanted`` columns in that order) for each data row."""
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        raise UserError(
            f"{where(path, 1)}: empty file; expected a header naming {', '.join(wanted)}"
        )
    header = first[1]
    positions = _positions(header, wanted, columns, path)
    for number, fields in rows:
        if fields == [""]:  # a blank line (e.g. an extra newline at the end) holds no row
            continue
        if len(fields) != len(header):
            raise UserError(
                f"{where(path, number)}: expected {len(header)} fields like the header, found "
                f"{len(fields)} (a tab or a missing field inside a text?)"
            )
        yield number, [fields[p] for p in positions]


def no_rows(path: Path, what: str, skipped: int = 0) -> UserError:
    """The 'empty task' error: the file holds nothing to evaluate."""
    extra = f" ({skipped} skipped for an empty text)" if skipped else ""
    at = where(path, 1) if isinstance(path, Path) else str(path)  # rows from Python: no line
    return UserError(f"{at}: no {what} to evaluate{extra}")


# ----------------------------------------------------------------------------- values
def parse_binary(text: str, path: Path, line: int) -> int:
    value = finite_number(text.strip(), path, line, "label")
    if value not in (0.0, 1.0):
        raise UserError(f"{where(path, line)}: label {text.strip()!r} must be 0 or 1")
    return int(value)


def parse_int(text: str, path: Path, line: int, what: str) -> int:
    value = finite_number(text.strip(), path, line, what)
    if not value.is_integer():
        raise UserError(f"{where(path, line)}: {what} {text.strip()!r} must be an integer")
    return int(value)


# ----------------------------------------------------------------------------- JSON lines
def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; anything but a JSON object is an error."""
    for number, text in read_lines(path):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{where(path, number)}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{where(path, number)}: expected a JSON object, found {obj!r:.40}")
        yield number, obj


def jsonl_has(path: Path, keys: Sequence[str]) -> bool:
    """Whether ``path`` is a .jsonl (maybe .gz) file whose first object has all of ``keys``."""
    if not path.is_file() or not base_name(path).endswith(JSONL_SUFFIXES):
        return False
    first = next(read_jsonl(path), None)
    return first is not None and set(keys) <= set(first[1])


def json_value(obj: Mapping[str, Any], key: str, path: Path, line: int, kind: Any = str) -> Any:
    """``obj[key]``, required to exist and be of ``kind`` (a type or a tuple of types)."""
    if key not in obj:
        keys = ", ".join(repr(k) for k in obj) or "none"
        raise UserError(f"{where(path, line)}: no key {key!r}; the object's keys are {keys}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(
            f"{where(path, line)}: {key!r} must be {_type_names(kind)}, found {value!r:.40}"
        )
    return value


def _type_names(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(f"a {k.__name__}" for k in kinds)


# ----------------------------------------------------------------------------- embedding
def as_encode(encode_or_encoder: Any) -> Encode:
    """``encoder.encode`` for an object with one (an Encoder is also callable: its forward),
    else the callable itself."""
    encode = getattr(encode_or_encoder, "encode", encode_or_encoder)
    if not callable(encode):
        raise TypeError(f"expected an encode function or an encoder, got {encode_or_encoder!r}")
    return encode


def embed_texts(
    encode: Encode, texts: Iterable[str], batch_size: int = 128
) -> tuple[dict[str, int], np.ndarray]:
    """Embed each distinct text once -> (text -> row, float32 [rows, dim]).

    Same order and batches as the built-in STS (longest first: little padding, an OOM comes
    early), but float32 and filled in place, so a 100k-text collection costs one matrix.
    """
    uniq = sorted(set(texts), key=lambda s: (-len(s), s))
    out: np.ndarray | None = None
    for start in range(0, len(uniq), batch_size):
        chunk = uniq[start : start + batch_size]
        emb = encode(chunk)
        if hasattr(emb, "detach"):  # a torch tensor, maybe on GPU or in bf16
            emb = emb.detach().float().cpu().numpy()
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(chunk):
            raise ValueError(
                f"encode returned shape {emb.shape} for {len(chunk)} texts; expected (n, dim)"
            )
        if out is None:
            out = np.empty((len(uniq), emb.shape[1]), dtype=np.float32)
        out[start : start + len(chunk)] = emb
    matrix = out if out is not None else np.zeros((0, 1), dtype=np.float32)
    return {s: i for i, s in enumerate(uniq)}, matrix
