"""Cutting a global batch into per-process slices."""

from __future__ import annotations

from typing import Any

from contrasent.core.errors import UserError


def local_slice(batch: Any, rank: int, world: int) -> tuple[Any, int]:
    """This process's contiguous equal slice of a global batch, and the rows dropped (a short
    last batch of an epoch is cut to a multiple of ``world``: slices must be equal). The slice's
    ``offset`` is its first row's place in the global batch."""
    n = len(batch)
    usable = n - n % world
    if usable == 0:
        raise UserError(f"a batch of {n} rows cannot be split over {world} processes")
    per = usable // world
    return batch.slice(rank * per, (rank + 1) * per), n - usable
