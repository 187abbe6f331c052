"""Column sources that are not text files: Parquet files (pyarrow), folders written by
``datasets.save_to_disk``, Hugging Face dataset ids (``hf:org/name[:config][@split]``, streamed)
and data passed from Python (:func:`register_memory`, named ``memory:<fingerprint>``).

Each is a :class:`Table`: the names of its columns (checked before training, so a missing
column names the ones that exist) and ``records(columns)``, one pass over the rows in a fixed
order as ``(row number, {column: value})``. The order never depends on the process or on time,
so the readers above can shuffle, resume by fast-forwarding and hold rows out exactly as they
do for a text file. Only the requested columns are read (Parquet and Arrow are columnar).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contrasent.core.errors import UserError

HF_PREFIX = "hf:"
MEMORY_PREFIX = "memory:"
_BATCH = 1024  # rows per Arrow batch: bounded memory, one Python conversion per batch
_MEMORY: dict[str, Any] = {}  # memory:<fingerprint> -> the rows / Dataset passed from Python

Record = dict[str, Any] | str | tuple | list


def table_kind(path: str | Path, fmt: str = "auto") -> str | None:
    """ "parquet", "disk", "hf" or "memory" when ``path`` names such a source, else None."""
    text = str(path)
    if text.startswith(HF_PREFIX):
        return "hf"
    if text.startswith(MEMORY_PREFIX):
        return "memory"
    if fmt == "parquet" or (fmt == "auto" and text.lower().endswith(".parquet")):
        return "parquet"
    folder = Path(_split_at(text)[0])
    if fmt == "auto" and folder.is_dir() and _is_saved_dataset(folder):
        return "disk"
    return None


def is_remote(path: str) -> bool:
    """Not a local file or folder (existence checks skip these)."""
    return str(path).startswith((HF_PREFIX, MEMORY_PREFIX))


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _split_at(text: str) -> tuple[str, str | None]:
    """``folder@split`` -> (folder, split); a plain folder -> (folder, None)."""
    head, at, split = text.rpartition("@")
    if at and split and "/" not in split and head:
        return head, split
    return text, None


@dataclass
class Table:
    """One pass-able column source (see the module docstring)."""

    label: str
    columns: list[str]
    _records: Any  # (columns or None) -> Iterator[Record]

    def records(self, columns: list[str] | None = None) -> Iterator[tuple[int, Record]]:
        """``(row number from 1, record)`` in the source's fixed order."""
        yield from enumerate(self._records(columns), 1)

    def require(self, names: list[str]) -> None:
        """UserError naming the existing columns when one of ``names`` is not among them."""
        missing = [n for n in names if n not in self.columns]
        if missing and self.columns:
            raise UserError(
                f"{self.label}: column {missing[0]!r} not found (columns: "
                f"{', '.join(self.columns)}); map it with data.columns"
            )


def open_table(path: str | Path, fmt: str = "auto") -> Table:
    """The :class:`Table` behind ``path`` (see :func:`table_kind`); UserError when unreadable."""
    kind = table_kind(path, fmt)
    opener = {"parquet": _parquet, "disk": _disk, "hf": _hub, "memory": _memory}.get(kind or "")
    if opener is None:
        raise UserError(f"{path}: not a Parquet file, saved dataset folder or hf: id")
    return opener(str(path))


# --------------------------------------------------------------------------- Parquet


def _parquet(path: str) -> Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None

    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    try:
        names = list(pq.ParquetFile(path).schema_arrow.names)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None

    def records(columns: list[str] | None) -> Iterator[Record]:
        with pq.ParquetFile(path) as pf:
            for batch in pf.iter_batches(batch_size=_BATCH, columns=columns):
                yield from batch.to_pylist()

    return Table(path, names, records)


# --------------------------------------------------------------------------- datasets


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError(
            "reading Hugging Face datasets needs the datasets library: "
            "pip install 'contrasent[datasets]'"
        ) from None
    datasets.disable_progress_bars()
    return datasets


def _pick_split(label: str, obj: Any, split: str | None) -> Any:
    """A DatasetDict's split (``@split``, default train); a single dataset as it is."""
    if not hasattr(obj, "keys") or hasattr(obj, "column_names") and not hasattr(obj, "values"):
        return obj
    splits = list(obj.keys())
    name = split or ("train" if "train" in splits else None)
    if name not in splits:
        raise UserError(f"{label}: pick a split with @SPLIT (splits: {', '.join(splits)})")
    return obj[name]


def dataset_table(label: str, ds: Any) -> Table:
    """A ``datasets.Dataset`` or ``IterableDataset`` as a Table (streamed, in its order)."""
    names = list(ds.column_names or [])
    if not names:  # a streamed dataset may not know its columns before the first row
        first = next(iter(ds), None)
        names = list(first) if isinstance(first, dict) else []

    def records(columns: list[str] | None) -> Iterator[Record]:
        part = ds.select_columns(columns) if columns else ds
        if hasattr(part, "iter") and hasattr(part, "num_rows"):  # a Dataset: Arrow batches
            for batch in part.iter(batch_size=_BATCH):
                keys = list(batch)
                yield from (
                    dict(zip(keys, vals, strict=True))
                    for vals in zip(*batch.values(), strict=False)
                )
        else:
            yield from part

    return Table(label, names, records)


def _disk(path: str) -> Table:
    datasets = _datasets()
    folder, split = _split_at(path)
    try:
        obj = datasets.load_from_disk(folder)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise UserError(f"{path}: not a datasets.save_to_disk folder ({e})") from None
    return dataset_table(path, _pick_split(path, obj, split))


def parse_hub_id(path: str) -> tuple[str, str | None, str]:
    """``hf:org/name[:config][@split]`` -> (name, config, split; default train)."""
    spec = path[len(HF_PREFIX) :]
    spec, at, split = spec.partition("@")
    name, colon, config = spec.partition(":")
    if not name or (colon and not config) or (at and not split):
        raise UserError(f"{path}: expected hf:org/name[:config][@split]")
    return name, config or None, split or "train"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set to a true value."""
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@contextmanager
def _offline_flags(datasets: Any, offline: bool) -> Iterator[None]:
    """The libraries read HF_HUB_OFFLINE once, at import: a variable set later (a notebook,
    a test) would otherwise reach for the network and wait for its timeout."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def _hub(path: str) -> Table:
    name, config, split = parse_hub_id(path)
    datasets = _datasets()
    offline = hub_offline()
    try:  # streaming: a corpus larger than the disk is never downloaded whole
        with _offline_flags(datasets, offline):
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 - the hub and its cache raise many types
        if offline:
            raise UserError(
                f"{path}: the hub id {name!r} is not in the local cache and HF_HUB_OFFLINE is "
                "set; unset HF_HUB_OFFLINE, or save the dataset (save_to_disk/Parquet) and "
                "point data.path at it"
            ) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot load {name!r} from the hub ({first})") from None
    return dataset_table(path, ds)


# --------------------------------------------------------------------------- from Python


def fingerprint(data: Any) -> str:
    """A content fingerprint of data passed from Python (resume checks it is the same data).

    A list is hashed row by row; a ``datasets.Dataset`` brings its own fingerprint (it changes
    with every transform); an ``IterableDataset`` is hashed by its description and first
    1000 rows (reading it all would defeat streaming).
    """
    h = hashlib.sha256()
    own = getattr(data, "_fingerprint", None)
    if own is not None:
        h.update(f"dataset:{own}".encode())
    elif isinstance(data, (list, tuple)):
        for row in data:
            h.update(json.dumps(row, sort_keys=True, default=str).encode())
            h.update(b"\n")
    else:
        h.update(repr(getattr(data, "info", type(data).__name__)).encode())
        for i, row in enumerate(data):
            if i == 1000:
                break
            h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def register_memory(data: Any) -> str:
    """Keep ``data`` (a list of rows, a Dataset or IterableDataset) under a ``memory:`` path
    that the readers accept like a file; the path carries the content fingerprint."""
    if isinstance(data, tuple):
        data = list(data)
    key = f"{MEMORY_PREFIX}{fingerprint(data)}"
    _MEMORY[key] = data
    return key


def _memory(path: str) -> Table:
    if path not in _MEMORY:
        raise UserError(
            f"{path}: data passed from Python is not available in this process; pass the same "
            "data again with contrasent.train(config, data=...)"
        )
    data = _MEMORY[path]
    if hasattr(data, "column_names"):
        return dataset_table(path, data)
    first = data[0] if data else None
    names = list(first) if isinstance(first, dict) else []
    return Table(path, names, lambda _cols: iter(data))
