"""Data kind ``pairs``: (anchor, positive[, negatives]) rows of a TSV/CSV/JSONL file -> PairBatch."""

from __future__ import annotations

from collections.abc import Iterator

from contrasent.data.batches import PairBatch
from contrasent.data.kinds.files import (
    Read,
    checked_readers,
    counted,
    dataset_name,
    epoch_kind,
    scan,
)
from contrasent.data.readers import ReadStats
from contrasent.data.registry import DataSpec
from contrasent.data.streams import Row, RowSource, pair_batch


def pair_rows(spec: DataSpec, seed: int) -> Read:
    readers = checked_readers(spec.paths, spec.columns, spec.format, spec.header, spec.on_error)

    def read(stats: ReadStats) -> Iterator[Row]:
        for r in readers:
            yield from r.rows(stats)

    stats = [scan(r.path, r.rows) for r in readers] if spec.scan else []
    source = RowSource(dataset_name(spec.paths), read, spec.shuffle_buffer, seed, 0)
    return source, counted(stats, spec.scan), stats


KIND = epoch_kind(
    "pairs",
    PairBatch,
    pair_rows,
    pair_batch,
    "(anchor, positive[, negatives]) rows of a TSV/CSV/JSONL/Parquet file, datasets or hf:",
    fields=frozenset({"columns"}),
)
