"""Data kinds ``nli`` (SimCSE's (premise, entailment, contradiction) triplets -> PairBatch) and
``nli_pairs`` (every labelled (premise, hypothesis, label) pair -> NLIBatch), both read from
SentEval SNLI-layout folders (:mod:`contrasent.data.nli`) and held in memory."""

from __future__ import annotations

from collections.abc import Callable

from contrasent.data.batches import NLIBatch, PairBatch
from contrasent.data.kinds.files import Read, epoch_kind, in_memory
from contrasent.data.nli import read_nli_pairs, read_nli_triplets
from contrasent.data.readers import ReadStats
from contrasent.data.registry import DataSpec
from contrasent.data.streams import Row, pair_batch


def nli_rows(reader: Callable[..., tuple[list, ReadStats]]) -> Callable[[DataSpec, int], Read]:
    def rows_of(spec: DataSpec, seed: int) -> Read:
        rows: list[Row] = []
        stats = []
        for folder in spec.paths:
            found, s = reader(folder, spec.split, spec.on_error)
            s.report()
            rows.extend(found)
            stats.append(s)
        return in_memory(spec, seed, rows, stats)

    return rows_of


def nli_batch(rows: list[Row], dataset: str | None = None) -> NLIBatch:
    """``(premise, hypothesis, label id)`` rows -> :class:`NLIBatch`."""
    return NLIBatch([r[0] for r in rows], [r[1] for r in rows], [int(r[2]) for r in rows])


TRIPLETS = epoch_kind(
    "nli",
    PairBatch,
    nli_rows(read_nli_triplets),
    pair_batch,
    "SimCSE's (premise, entailment, contradiction) triplets from SNLI-layout folders",
    fields=frozenset({"split"}),
)
PAIRS = epoch_kind(
    "nli_pairs",
    NLIBatch,
    nli_rows(read_nli_pairs),
    nli_batch,
    "every labelled (premise, hypothesis, label) pair of SNLI-layout folders",
    fields=frozenset({"split"}),
)
