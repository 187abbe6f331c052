"""Data kind ``mixture``: the pair datasets of a 1B-pairs style ``data_config.json``, mixed by
weight (each batch from one dataset, or each row's dataset drawn by weight) -> PairBatch."""

from __future__ import annotations

from typing import Any

from contrasent.core.errors import UserError
from contrasent.data.batches import PairBatch
from contrasent.data.data_config import load_data_config
from contrasent.data.kinds.files import checked_readers, scan
from contrasent.data.readers import ReadStats
from contrasent.data.registry import DataKind, DataSpec, fingerprint_of
from contrasent.data.streams import MixtureStream, RowSource, hold_out


def mixture_stream(spec: DataSpec, batch_size: int, seed: int) -> MixtureStream:
    assert spec.data_config is not None
    defaults = {"columns": spec.columns, "format": spec.format, "header": spec.header}
    entries = load_data_config(spec.data_config, spec.data_dir, **defaults)
    readers = []
    for e in entries:
        try:
            checked = checked_readers([str(e.path)], e.columns, e.format, e.header, spec.on_error)
        except UserError as err:
            raise UserError(f"{spec.data_config}: dataset {e.name!r}: {err}") from None
        readers.append(checked[0])
    if not spec.batch_from_one_dataset:
        widths = {e.name: r.num_negatives for e, r in zip(entries, readers, strict=True)}
        if len(set(widths.values())) > 1:
            raise UserError(
                f"{spec.data_config}: mixed batches need the same number of negatives in every "
                f"dataset, found {widths}; set batch_from_one_dataset: true"
            )
    counts: list[int] | None = None
    stats: list[ReadStats] = []
    if spec.scan:
        stats = [scan(e.name, r.rows) for e, r in zip(entries, readers, strict=True)]
        counts = [s.rows for s in stats]
    elif all(e.lines is not None for e in entries):
        counts = [e.lines for e in entries]  # type: ignore[misc]
    sources = [
        RowSource(e.name, r.rows, spec.shuffle_buffer, seed, i)
        for i, (e, r) in enumerate(zip(entries, readers, strict=True))
    ]
    for source in sources:
        source.scanned = spec.scan
    if spec.validation is not None and not isinstance(spec.validation, str):
        # held-out rows leave the epoch; `lines` entries (no scan) only estimate the rows
        totals: list[int | None] = list(counts or []) if spec.scan else [None] * len(sources)
        held = hold_out(sources, totals, spec.validation)
        if counts is not None:
            f = float(spec.validation)
            counts = [
                c - (round(f * c) if h is None else h) for c, h in zip(counts, held, strict=True)
            ]
    steps = None if counts is None else max(1, sum(counts) // batch_size)
    if spec.epochs is not None and steps is None:
        raise UserError(
            f"{spec.data_config}: data.epochs needs row counts (scan: true or a 'lines' entry "
            "per dataset); or set data.epochs: null and stop by max_steps"
        )
    fingerprint = {
        **fingerprint_of(spec, batch_size, seed),
        "data_config": [[e.name, e.weight] for e in entries],
        "batch_from_one_dataset": spec.batch_from_one_dataset,
    }
    max_steps = None if spec.epochs is None or steps is None else spec.epochs * steps
    stream = MixtureStream(
        sources,
        [e.weight for e in entries],
        batch_size,
        spec.batch_from_one_dataset,
        spec.dedup_in_batch,
        seed,
        fingerprint,
        max_steps,
    )
    stream.steps_per_epoch = steps
    stream.stats = stats
    return stream


def _build(spec: DataSpec, _options: Any, batch_size: int, seed: int, _tok: Any) -> Any:
    return mixture_stream(spec, batch_size, seed)


KIND = DataKind(
    "mixture",
    PairBatch,
    _build,
    summary="pair datasets of a 1B-style data_config.json, mixed by weight",
    source="data_config",
    fields=frozenset({"columns", "data_config", "data_dir", "batch_from_one_dataset"}),
)
