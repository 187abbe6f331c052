"""Mixture data configs in the format of the 1B-pairs project's `data_config.json`.

The file is a JSON list, one object per dataset::

    [
      {"name": "gooaq_pairs.jsonl.gz", "lines": 3012496, "weight": 247},
      {"path": "nli/triplets.csv", "weight": 10,
       "columns": {"anchor": "sent0", "positive": "sent1", "negative": "hard_neg"}}
    ]

Keys: `name` and/or `path` (the file, a datasets.save_to_disk folder or an hf: id; relative paths are resolved against the spec's
`data_dir`, else the config file's folder; when both are given `name` only labels the dataset),
`weight` (a positive integer: the dataset is drawn with probability weight / sum of weights),
and optionally `lines` (row count, used for steps_per_epoch when the files are not scanned),
`columns`, `format` and `header` (as in DataSpec; default: the spec's values). Any other key is
an error, so a typo cannot silently drop a setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contrasent.core.errors import UserError, where
from contrasent.data.sources import is_remote, table_kind

ENTRY_KEYS = ("name", "path", "weight", "lines", "columns", "format", "header")
FORMATS = ("auto", "txt", "tsv", "csv", "jsonl", "parquet")


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a mixture, checked and with its file resolved."""

    name: str
    path: Path
    weight: int
    lines: int | None = None
    columns: dict | None = None
    format: str = "auto"
    header: bool | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(
    raw: Any, index: int, config: Path, root: Path, defaults: dict[str, Any]
) -> DatasetEntry:
    label = f"{config}: entry {index}"
    if not isinstance(raw, dict):
        raise UserError(f"{label}: expected an object with name/path and weight, got {raw!r}")
    file = raw.get("path", raw.get("name"))
    if file is not None:
        label += f" ({raw.get('name', file)})"
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise UserError(f"{label}: unknown key(s) {unknown}; allowed: {', '.join(ENTRY_KEYS)}")
    if not isinstance(file, str) or not file:
        raise UserError(f"{label}: needs a 'name' or 'path' naming the data file")
    name = raw.get("name", file)
    if not isinstance(name, str) or not name:
        raise UserError(f"{label}: 'name' must be a non-empty string")
    weight = raw.get("weight")
    if not _is_int(weight) or weight < 1:
        raise UserError(f"{label}: 'weight' must be a positive integer, got {weight!r}")
    lines = raw.get("lines")
    if lines is not None and (not _is_int(lines) or lines < 0):
        raise UserError(f"{label}: 'lines' must be a non-negative integer, got {lines!r}")
    columns = raw.get("columns", defaults.get("columns"))
    if columns is not None and not isinstance(columns, dict):
        raise UserError(f"{label}: 'columns' must be an object role -> column, got {columns!r}")
    fmt = raw.get("format", defaults.get("format", "auto"))
    if fmt not in FORMATS:
        raise UserError(f"{label}: 'format' must be one of {FORMATS}, got {fmt!r}")
    header = raw.get("header", defaults.get("header"))
    if header is not None and not isinstance(header, bool):
        raise UserError(f"{label}: 'header' must be true, false or null, got {header!r}")
    path = Path(file).expanduser()
    if is_remote(file):  # hf:org/name: opened (and checked) by the reader
        return DatasetEntry(name, path, weight, lines, columns, fmt, header)
    path = path if path.is_absolute() else root / path
    if not path.is_file() and table_kind(path) != "disk":  # a file or a save_to_disk folder
        raise UserError(f"{label}: data file not found: {path}")
    return DatasetEntry(name, path, weight, lines, columns, fmt, header)


def load_data_config(
    config: str | Path, data_dir: str | Path | None = None, **defaults: Any
) -> list[DatasetEntry]:
    """Read and check a data config; `defaults` (columns, format, header) fill missing keys.

    Raises UserError naming the config file and the entry for a missing data file, a bad
    weight, an unknown key, or duplicate names.
    """
    config = Path(config).expanduser()
    if not config.is_file():
        raise UserError(f"{config}: data config not found")
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{where(config, e.lineno)}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{config}: invalid UTF-8") from None
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{config}: expected a non-empty JSON list of datasets")
    root = Path(data_dir).expanduser() if data_dir is not None else config.parent
    entries = [_entry(item, i, config, root, defaults) for i, item in enumerate(raw)]
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.name in seen:
            raise UserError(
                f"{config}: entries {seen[entry.name]} and {i} are both named {entry.name!r}; "
                "names label batches and must be unique"
            )
        seen[entry.name] = i
    return entries
