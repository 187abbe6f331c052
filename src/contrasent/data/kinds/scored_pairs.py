"""Data kind ``scored_pairs``: (sentence1, sentence2, score) rows of a TSV/CSV/JSONL file ->
:class:`~contrasent.data.batches.ScoredPairBatch`, for the scored-pair objectives (``cosent``,
``angle``, ``cosine_mse``, ``contrastive``, ``online_contrastive``).

``data.columns`` maps the roles ``sentence1``, ``sentence2`` and ``score`` to columns (names with a
header row, integer indices without; default ``0, 1, 2``). The score range is DECLARED in
``data.options`` (``score_min``, ``score_max``; STS-B: 0 and 5, duplicate flags: 0 and 1) and
every score is mapped onto [0, 1] by ``(score - score_min) / (score_max - score_min)``, the range
sentence-transformers' STS examples normalise to. A score outside the declared range or one that
is not a number is a UserError at ``file:line`` (a counted skip with ``on_error: skip``), never a
silently clipped value. Rows with an empty sentence are counted skips, as for ``pairs``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from contrasent.core.errors import UserError, where
from contrasent.data.batches import ScoredPairBatch
from contrasent.data.kinds.files import counted, dataset_name, scan
from contrasent.data.readers import EMPTY_FIELD, EMPTY_LINE, PairReader, ReadStats, iter_lines
from contrasent.data.registry import DataKind, DataSpec, epoch_stream
from contrasent.data.streams import Row, RowSource

ROLES = ("sentence1", "sentence2", "score")
BAD_SCORE = "bad score"


@dataclass
class ScoredPairsOptions:
    """Options of ``scored_pairs``.

    Attributes:
        score_min: The lowest score the file may hold (mapped to 0). STS-B: 0.
        score_max: The highest score the file may hold (mapped to 1). STS-B: 5; 0/1 flags: 1.
        trailing_columns: A headerless TSV read by column index may have rows with more
            fields than the first (STS-B's sts-*.csv: source notes after sentence2); the extra
            fields are ignored. Off: such a row is malformed, as for ``pairs``.
    """

    score_min: float = 0.0
    score_max: float = 1.0
    trailing_columns: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.score_min) and math.isfinite(self.score_max)):
            raise ValueError("score_min and score_max must be finite numbers")
        if self.score_max <= self.score_min:
            raise ValueError(
                f"score_max ({self.score_max}) must be greater than score_min ({self.score_min})"
            )


def _column_map(columns: dict | None, source: str) -> dict:
    """The user's role -> column map as :class:`PairReader` roles (the score rides as the one
    'negative' column, so the pair reader's header, index and width checks apply unchanged)."""
    columns = {"sentence1": 0, "sentence2": 1, "score": 2} if columns is None else columns
    if not isinstance(columns, dict):
        raise UserError(f"{source}: columns must be a mapping role -> column, got {columns!r}")
    unknown = sorted(set(columns) - set(ROLES))
    missing = [r for r in ROLES if r not in columns]
    if unknown or missing:
        raise UserError(
            f"{source}: scored_pairs columns need exactly the roles {list(ROLES)}"
            + (f"; unknown: {unknown}" if unknown else "")
            + (f"; missing: {missing}" if missing else "")
        )
    return {"anchor": columns["sentence1"], "positive": columns["sentence2"],
            "negative": [columns["score"]]}  # fmt: skip


class ScoredPairReader(PairReader):
    """Streams ``(sentence1, sentence2, normalised score)`` from one file (see the module doc)."""

    def __init__(self, spec: DataSpec, path: str, options: ScoredPairsOptions) -> None:
        columns = _column_map(spec.columns, f"{path} (columns)")
        super().__init__(path, columns, spec.format, spec.header, spec.on_error)
        self.low, self.high = options.score_min, options.score_max
        self.trailing = options.trailing_columns
        if self.trailing and (self.fmt != "tsv" or self.header):
            raise UserError(f"{path}: trailing_columns is for headerless TSV files")

    def _table_records(self, stats: ReadStats) -> Iterator[tuple[int, list[str] | None]]:
        if not self.trailing:
            yield from super()._table_records(stats)
            return
        need = max(self.columns.refs) + 1  # type: ignore[union-attr, type-var, operator]
        for lineno, line in iter_lines(self.path, stats, self.on_error):
            if not line.strip():
                stats.skip(EMPTY_LINE)
                continue
            fields = line.split("\t")
            if len(fields) < need:
                self._bad(stats, lineno, f"expected at least {need} columns, found {len(fields)}")
                yield lineno, None
                continue
            yield lineno, fields

    def _select(self, fields: list | dict, lineno: int, stats: ReadStats) -> tuple[str, ...] | None:
        # JSON numbers are scores too: the pair reader accepts text only
        ref = self.columns.negatives[0]  # type: ignore[union-attr]
        key = str(ref) if isinstance(fields, dict) else (self._indices or self.columns.refs)[2]  # type: ignore[union-attr]
        try:
            value = fields[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            value = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            fields = dict(fields) if isinstance(fields, dict) else list(fields)
            fields[key] = repr(float(value))  # type: ignore[index]
        return super()._select(fields, lineno, stats)

    def score(self, text: str, lineno: int, stats: ReadStats) -> float | None:
        """The normalised score, or None after a counted skip (on_error: skip)."""
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        problem = None
        if not math.isfinite(value):
            problem = f"score {text!r} is not a number"
        elif not self.low <= value <= self.high:
            problem = (
                f"score {value:g} is outside the declared range [{self.low:g}, {self.high:g}] "
                "(data.options score_min / score_max)"
            )
        if problem is None:
            return (value - self.low) / (self.high - self.low)
        if self.on_error == "skip":
            stats.skip(BAD_SCORE)
            return None
        raise UserError(f"{where(self.path, lineno)}: {problem}")

    def rows(self, stats: ReadStats | None = None) -> Iterator[tuple[str, str, float]]:
        stats = stats if stats is not None else ReadStats(self.path)
        records = self._json_records if self.fmt == "jsonl" else self._table_records
        for lineno, fields in records(stats):
            row = self._select(fields, lineno, stats) if fields is not None else None
            if row is None:
                continue
            s1, s2, text = row
            if not s1 or not s2:
                stats.skip(EMPTY_FIELD)
                continue
            score = self.score(text, lineno, stats)
            if score is None:
                continue
            stats.rows += 1
            yield s1, s2, score


def scored_batch(rows: list[Row], dataset: str | None = None) -> ScoredPairBatch:
    """``(sentence1, sentence2, score)`` rows -> :class:`ScoredPairBatch`."""
    return ScoredPairBatch([r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows])


def build_scored_pairs(
    spec: DataSpec, options: ScoredPairsOptions, batch_size: int, seed: int, _tok: Any
) -> Any:
    readers = [ScoredPairReader(spec, p, options) for p in spec.paths]
    for r in readers:
        r.check()

    def read(stats: ReadStats) -> Iterator[Row]:
        for r in readers:
            yield from r.rows(stats)

    stats = [scan(r.path, r.rows) for r in readers] if spec.scan else []
    source = RowSource(dataset_name(spec.paths), read, spec.shuffle_buffer, seed, 0)
    return epoch_stream(
        spec, batch_size, seed, (source, counted(stats, spec.scan), stats), scored_batch
    )


KIND = DataKind(
    "scored_pairs",
    ScoredPairBatch,
    build_scored_pairs,
    options=ScoredPairsOptions,
    summary="(sentence1, sentence2, score) rows of a TSV/CSV/JSONL file, score range declared",
    fields=frozenset({"columns"}),
)
