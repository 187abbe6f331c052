"""Data kind ``text``: one text a line (.txt, .txt.gz), or the text column of a JSONL/CSV/TSV/
Parquet file, a saved dataset or an hf: id (``data.columns: {text: body}``) -> SentenceBatch."""

from __future__ import annotations

from collections.abc import Iterator

from contrasent.core.errors import UserError
from contrasent.data.batches import SentenceBatch
from contrasent.data.kinds.files import Read, counted, dataset_name, epoch_kind, scan
from contrasent.data.readers import ColumnMap, ReadStats, detect_format, read_texts
from contrasent.data.registry import DataSpec
from contrasent.data.streams import Row, RowSource, sentence_batch


def text_rows(spec: DataSpec, seed: int) -> Read:
    paths, on_error = spec.paths, spec.on_error
    how = (spec.format, spec.columns, spec.header)
    ColumnMap.parse_text(spec.columns, "data.columns")
    for p in paths:
        if spec.columns is not None and detect_format(p, spec.format) == "txt":
            raise UserError(f"{p}: a .txt file has one text a line, no columns: drop data.columns")
        first = read_texts(p, on_error, None, *how)
        next(first, None)  # opens the file and decodes up to the first text: early errors
        first.close()

    def read(stats: ReadStats) -> Iterator[Row]:
        for p in paths:
            yield from read_texts(p, on_error, stats, *how)

    def reader(p: str):
        return lambda stats: read_texts(p, on_error, stats, *how)

    stats = [scan(p, reader(p)) for p in paths] if spec.scan else []
    source = RowSource(dataset_name(paths), read, spec.shuffle_buffer, seed, 0)
    return source, counted(stats, spec.scan), stats


KIND = epoch_kind(
    "text",
    SentenceBatch,
    text_rows,
    sentence_batch,
    "one text a line (.txt, .txt.gz), or a text column (JSONL/CSV/Parquet/datasets/hf:)",
    fields=frozenset({"columns"}),
)
