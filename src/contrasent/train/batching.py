"""Cutting a global batch into per-process slices and row chunks."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from contrasent.errors import UserError


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a batch dataclass: per-row lists/tensors are cut, and so is every
    column of a list of per-row columns (``PairBatch.negatives``); other fields are kept."""
    if hasattr(batch, "slice"):
        return batch.slice(start, stop)
    n = len(batch)

    def cut(value: Any) -> Any:
        if (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(c, (list, tuple, torch.Tensor)) and len(c) == n for c in value)
        ):
            return type(value)(c[start:stop] for c in value)
        if isinstance(value, (list, tuple, torch.Tensor)) and len(value) == n:
            return value[start:stop]
        return value

    changes = {f.name: cut(getattr(batch, f.name)) for f in dataclasses.fields(batch)}
    return dataclasses.replace(batch, **changes)


def local_slice(batch: Any, rank: int, world: int) -> tuple[Any, int]:
    """This process's contiguous equal slice of a global batch, and the rows dropped (a short
    last batch of an epoch is cut to a multiple of ``world``: slices must be equal)."""
    n = len(batch)
    usable = n - n % world
    if usable == 0:
        raise UserError(f"a batch of {n} rows cannot be split over {world} processes")
    per = usable // world
    return slice_batch(batch, rank * per, (rank + 1) * per), n - usable
