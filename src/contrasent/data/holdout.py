"""Rows held out of the training data for the validation loss (``data.validation``).

A row's position is its place among the usable rows of one pass over its dataset, in file order
(rows skipped for errors or, for documents, for being too short take no position). Row ``p`` has
a keyed draw ``u_p`` in [0, 1): element ``p % BLOCK`` of ``keyed_rng(seed, HOLD, dataset,
p // BLOCK).random(BLOCK)``. The held-out rows are those with the smallest draws:

* a count ``n`` (it needs the row count ``M``, which the scan gives): the ``n`` smallest draws;
* a fraction ``f`` with ``M`` known: the ``max(1, round(f * M))`` smallest draws, so the share
  is exact;
* a fraction without ``M`` (``data.scan: false``): every row whose draw is below ``f`` (about
  ``f * M`` rows; the set-up pass that collects them reports the count).

The rule reads the seed, the dataset's key and the row's position only: every process, every
epoch and every resume holds out the same rows without carrying any state, and the training
passes skip them. A mixture holds a fraction out of each dataset, and splits a count over its
datasets in proportion to their rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from contrasent.core.errors import UserError
from contrasent.core.rng import keyed_rng

__all__ = ["BLOCK", "HOLD", "HeldOut", "held_counts"]

HOLD = 0x686F6C64  # key of the hold-out draws, apart from the shuffles and the mixture draws
BLOCK = 4096  # rows per keyed draw: one numpy call per block, not per row


def _draws(seed: int, key: int, block: int) -> np.ndarray:
    return keyed_rng(seed, HOLD, key, block).random(BLOCK)


def smallest(seed: int, key: int, total: int, n: int) -> np.ndarray:
    """Sorted positions of the ``n`` smallest draws among rows ``0 .. total - 1``; memory
    O(n + BLOCK) (candidates are cut back to ``n`` whenever they pass ``2n + BLOCK``)."""
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    size = 0

    def cut() -> list[tuple[np.ndarray, np.ndarray]]:
        u = np.concatenate([p[0] for p in parts])
        pos = np.concatenate([p[1] for p in parts])
        keep = np.argpartition(u, n - 1)[:n] if len(u) > n else np.arange(len(u))
        return [(u[keep], pos[keep])]

    for block in range(-(-total // BLOCK)):
        start = block * BLOCK
        u = _draws(seed, key, block)[: total - start]
        parts.append((u, np.arange(start, start + len(u))))
        size += len(u)
        if size > 2 * n + BLOCK:
            parts, size = cut(), n
    return np.sort(cut()[0][1])


class HeldOut:
    """Which positions of one dataset are held out: ``positions`` (sorted) or, when the row
    count is unknown, every row whose draw is below ``fraction``."""

    def __init__(
        self, seed: int, key: int, positions: np.ndarray | None = None, fraction: float = 0.0
    ) -> None:
        self.seed, self.key, self.positions, self.fraction = seed, key, positions, fraction

    @property
    def count(self) -> int | None:
        """Rows held out, when known before a pass."""
        return None if self.positions is None else len(self.positions)

    def mask(self, block: int) -> np.ndarray:
        """Held-out flags of the rows of ``block``."""
        if self.positions is None:
            return _draws(self.seed, self.key, block) < self.fraction
        start = block * BLOCK
        lo, hi = np.searchsorted(self.positions, [start, start + BLOCK])
        flags = np.zeros(BLOCK, dtype=bool)
        flags[self.positions[lo:hi] - start] = True
        return flags

    def split(self, rows: Iterable[Any], held: bool) -> Iterator[Any]:
        """The rows that are held out (``held``) or the others, in their order."""
        flags = np.zeros(0, dtype=bool)
        for p, row in enumerate(rows):
            if p % BLOCK == 0:
                flags = self.mask(p // BLOCK)
            if flags[p % BLOCK] == held:
                yield row


def held_counts(validation: int | float, totals: list[int | None]) -> list[int | None]:
    """Rows to hold out of each dataset (``totals``: their row counts, None when unknown):
    ``None`` where a fraction is drawn row by row (see the module docstring)."""
    if isinstance(validation, float) and any(t is None for t in totals):
        return [None] * len(totals)
    if any(t is None for t in totals):
        raise UserError(
            f"data.validation {validation} is a row count, which needs the number of rows: "
            "set data.scan: true, or give a fraction such as 0.01",
            "data.validation",
        )
    known: list[int] = [int(t) for t in totals]  # type: ignore[arg-type]
    total = sum(known)
    n = validation if isinstance(validation, int) else max(1, round(validation * total))
    if n >= total:
        raise UserError(
            f"data.validation {validation} holds out {n} of the {total} training rows: "
            "nothing would be left to train on; hold out fewer rows",
            "data.validation",
        )
    if len(known) == 1:
        return [n]
    # a mixture: in proportion to each dataset's rows, the remainders to the largest fractions
    shares = [n * t / total for t in known]
    counts = [int(s) for s in shares]
    order = sorted(range(len(known)), key=lambda i: counts[i] - shares[i])
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    if any(c >= t for c, t in zip(counts, known, strict=True)):
        raise UserError(
            f"data.validation {validation} would hold out every row of a small dataset of the "
            f"mixture (rows {known}, held out {counts}); hold out fewer rows",
            "data.validation",
        )
    return counts
