"""Helpers shared by the file-backed data kinds: scanning, row counts, checked pair readers, and
the one-dataset kind built on :func:`~contrasent.data.registry.epoch_stream`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contrasent.core.errors import UserError
from contrasent.data.readers import PairReader, ReadStats
from contrasent.data.registry import DataKind, DataSpec, epoch_stream
from contrasent.data.streams import Row, RowSource, ToBatch

#: what a one-dataset kind reads: (its rows, their count or None, the scan's stats)
Read = tuple[RowSource, int | None, list[ReadStats]]


def dataset_name(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"


def scan(label: str, read: Any) -> ReadStats:
    """One full pass over a dataset, `read(stats)` giving its rows: validation + counting."""
    stats = ReadStats(label)
    for _ in read(stats):
        pass
    stats.report()
    if stats.rows == 0:
        raise UserError(f"{label}: no usable rows ({stats.summary()})")
    return stats


def counted(stats: list[ReadStats], scanned: bool) -> int | None:
    return sum(s.rows for s in stats) if scanned else None


def checked_readers(
    paths: list[str], columns: dict | None, fmt: Any, header: bool | None, on_error: Any
) -> list[PairReader]:
    """Pair readers whose header and first rows are checked, all with the same negatives."""
    readers = [PairReader(p, columns, fmt, header, on_error) for p in paths]
    for r in readers:
        r.check()
    widths = {r.path: r.num_negatives for r in readers if r.num_negatives is not None}
    if len(set(widths.values())) > 1:
        raise UserError(f"files of one dataset differ in their number of negatives: {widths}")
    return readers


def in_memory(spec: DataSpec, seed: int, rows: list[Row], stats: list[ReadStats]) -> Read:
    """A dataset held in memory: fully shuffled each epoch (keyed) unless shuffle_buffer <= 1."""

    def read(s: ReadStats) -> Any:
        s.rows = s.lines = len(rows)
        return iter(rows)

    buffer = len(rows) if spec.shuffle_buffer > 1 else 0
    return RowSource(dataset_name(spec.paths), read, buffer, seed, 0), len(rows), stats


def epoch_kind(
    name: str,
    batch_type: type,
    rows: Callable[[DataSpec, int], Read],
    to_batch: ToBatch,
    summary: str,
    fields: frozenset[str] = frozenset(),
) -> DataKind:
    """A kind whose rows (``rows(spec, seed)``) are batched epoch by epoch."""

    def build(spec: DataSpec, _options: Any, batch_size: int, seed: int, _tok: Any) -> Any:
        return epoch_stream(spec, batch_size, seed, rows(spec, seed), to_batch)

    return DataKind(name, batch_type, build, summary=summary, fields=fields)
