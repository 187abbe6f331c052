"""The torch-free half of hard-negative mining: the rules (:class:`MineSettings`, the one
definition that ``contrasent mine`` shows in ``--help`` and :mod:`contrasent.serve.mine` runs)
and reading the model record of an index folder (``--index``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contrasent.core.errors import UserError

# what must agree between the mining model and the index's for the scores to be comparable
MODEL_KEYS = ("name_or_path", "pooling", "normalize", "max_seq_length", "dim")


@dataclass
class MineSettings:
    """The mining rules (sentence-transformers' ``mine_hard_negatives`` option names).

    Attributes:
        num_negatives: Negatives per pair (rows with fewer survivors are not written, counted).
        range_min: Skip the first range_min ranked candidates (after the filters below).
        range_max: Consider candidates up to this rank; default: range_min + num_negatives
            (x10 with a margin or max_score) + the most positives an anchor has.
        margin: Absolute margin: keep a negative only if score < positive score - margin.
        relative_margin: Relative margin (NV-Retriever): keep it only if
            score < positive - |positive| * relative_margin (0.05: TopK-PercPos 95%).
        max_score: Drop candidates scoring above this (likely false negatives).
        sampling: top: the best-ranked survivors; random: drawn from the window (keyed by
            --seed and the anchor: reproducible, the same whatever the shards).
        seed: Seed of --sampling random.
        engine: exact (the project's blocked exact top-k) or faiss (a flat inner-product
            index over the corpus; with --index, the index's own faiss index when it holds
            exactly the candidate corpus).
    """

    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None
    margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    sampling: Literal["top", "random"] = "top"
    seed: int = 12
    engine: Literal["exact", "faiss"] = "exact"

    def rules(self) -> MineSettings:
        """These fields alone (a subclass such as the command's options carries more)."""
        return MineSettings(**{k: getattr(self, k) for k in MineSettings.__dataclass_fields__})

    def filtered(self) -> bool:
        return any(x is not None for x in (self.margin, self.relative_margin, self.max_score))

    def window(self, max_positives: int, corpus_size: int) -> tuple[int, int]:
        """``(range_min, range_max)``; the reference's default range_max (room for ten times
        the negatives when a filter may drop candidates); one UserError for a bad range."""
        if self.num_negatives < 1:
            raise UserError(f"--num_negatives must be >= 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise UserError(f"--range_min must be >= 0, got {self.range_min}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise UserError(f"--relative_margin must be in [0, 1), got {self.relative_margin}")
        lo, hi = self.range_min, self.range_max
        if hi is None:
            room = self.num_negatives * (10 if self.filtered() else 1)
            hi = lo + room + max_positives
        if hi - lo < self.num_negatives:
            raise UserError(
                f"--range_min {lo} / --range_max {hi} leave {hi - lo} candidates for "
                f"--num_negatives {self.num_negatives}"
            )
        if self.range_max is not None and self.range_max > corpus_size:
            raise UserError(
                f"--range_max {self.range_max} is beyond the corpus ({corpus_size} texts)"
            )
        if lo + self.num_negatives > corpus_size - 1:
            raise UserError(
                f"--range_min {lo} + --num_negatives {self.num_negatives} is beyond the corpus "
                f"({corpus_size} texts, the anchor's own positive excluded)"
            )
        return lo, hi


def index_record(folder: str | Path) -> dict[str, Any]:
    """The model an index folder was built with (its ``index.json``); one line when the folder
    is not an index or records no model."""
    meta_file = Path(folder) / "index.json"
    if not meta_file.is_file():
        raise UserError(f"--index {folder} is not a contrasent index (no index.json)")
    try:
        model = json.loads(meta_file.read_text(encoding="utf-8")).get("model")
    except ValueError as e:
        raise UserError(f"{meta_file}: cannot read JSON: {e}") from e
    if not (model and model.get("name_or_path")):
        raise UserError(f"--index {folder}: the index records no model; pass --model")
    return model


def model_mismatch(mining: dict[str, Any], index: dict[str, Any]) -> str | None:
    """What differs between the mining model's record and the index's (None: the same)."""
    diffs = [
        f"{k} {mining.get(k)!r} vs {index.get(k)!r}"
        for k in MODEL_KEYS
        if mining.get(k) != index.get(k)
    ]
    return "; ".join(diffs) or None
