"""Pooling names, defined once (torch-free: the CLI's option types and --help read them).

The pooling math is :func:`contrasent.model.passes.pool`; how each pooling is written in a
sentence-transformers folder is :mod:`contrasent.model.st_layout`.
"""

from __future__ import annotations

from typing import Literal

from contrasent.core.errors import UserError

#: poolings averaging two hidden states (HF indexing: 0 = embedding-layer output, i = layer i),
#: written as WeightedLayerPooling
HIDDEN_STATE_PICKS = {
    "avg_top2": (-1, -2),  # SimCSE / ConSERT "avg_top2"
    "avg_first_last": (1, -1),  # SimCSE's models.py: hidden_states[1], the first layer
    "avg_embeddings_last": (0, -1),  # the papers' "first-last avg." rows (BERT-flow's)
}
HIDDEN_STATE_POOLINGS = tuple(HIDDEN_STATE_PICKS)
POOLINGS = ("cls", "cls_before_pooler", "mean", "max", *HIDDEN_STATE_POOLINGS)

#: the option type of every ``pooling`` field (recipes, command lines): the names above
Pooling = Literal[POOLINGS]  # type: ignore[valid-type]


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; valid poolings: {', '.join(POOLINGS)}")
    return pooling
