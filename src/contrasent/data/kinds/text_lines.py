"""Data kind ``text_lines``: one text a line of a .txt (.txt.gz) file, each row carrying its line
number -> NumberedSentenceBatch. The line number (0-based, empty lines counted) is the row of
`contrasent embed`'s output for that file (merged shards included), so a precomputed embedding
of each row (``distill_mse``'s ``teacher_embeddings``) is found whatever the shuffle, the
process slicing or a resume: the number travels inside the row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from contrasent.core.errors import UserError
from contrasent.data.batches import NumberedSentenceBatch
from contrasent.data.kinds.files import counted, scan
from contrasent.data.lines import numbered_lines
from contrasent.data.readers import ReadStats, detect_format
from contrasent.data.registry import DataKind, DataSpec, epoch_stream
from contrasent.data.streams import Row, RowSource


def _build(spec: DataSpec, _options: Any, batch_size: int, seed: int, _tok: Any) -> Any:
    if len(spec.paths) != 1 or detect_format(spec.paths[0], spec.format) != "txt":
        raise UserError(
            f"data.path {spec.path}: text_lines reads one .txt (.txt.gz) file, one text a line "
            "(the file `contrasent embed` embedded: line numbers are its rows)"
        )
    path, on_error = spec.paths[0], spec.on_error
    first = numbered_lines(path, on_error, ReadStats(path))
    next(first, None)  # opens the file and decodes up to the first text: early errors
    first.close()

    def read(stats: ReadStats) -> Iterator[Row]:
        return numbered_lines(path, on_error, stats)

    stats = [scan(path, read)] if spec.scan else []
    lines = stats[0].lines if stats else None  # every line, empty ones too: embed's rows

    def to_batch(rows: list[Row], dataset: str | None = None) -> NumberedSentenceBatch:
        return NumberedSentenceBatch(
            texts=[r[1] for r in rows], lines=[r[0] for r in rows], source=path,
            source_lines=lines,
        )  # fmt: skip

    source = RowSource(path, read, spec.shuffle_buffer, seed, 0)
    return epoch_stream(spec, batch_size, seed, (source, counted(stats, spec.scan), stats),
                        to_batch)  # fmt: skip


KIND = DataKind(
    "text_lines",
    NumberedSentenceBatch,
    _build,
    summary="one text a line of a .txt file, each row with its line number (the row of "
    "`contrasent embed`'s output): distill_mse's teacher_embeddings",
)
