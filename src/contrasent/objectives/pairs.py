"""In-batch negatives over (anchor, positive[, negatives...]) pairs: the "1B pairs" recipe.

Also home of :func:`gathered_info_nce`, the cross-process InfoNCE every in-batch objective uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from contrasent.data.batches import PairBatch
from contrasent.errors import UserError
from contrasent.objectives.base import InBatchObjective
from contrasent.objectives.functional import (
    duplicate_mask,
    in_batch_accuracy,
    info_nce_with_logits,
    logit_scale,
    text_ids,
)
from contrasent.train.distributed import all_gather_no_grad, all_gather_with_grad, row_offset

DEDUP = ("mask", "none")


@dataclass
class RowTextIds:
    """Text ids (:func:`functional.text_ids`) of the local rows: anchors, positives, negatives."""

    anchors: Tensor
    positives: Tensor
    negatives: list[Tensor]

    @classmethod
    def of(
        cls, anchors: list[str], positives: list[str], negatives: list[list[str]], device: Any
    ) -> RowTextIds:
        return cls(
            text_ids(anchors, device),
            text_ids(positives, device),
            [text_ids(c, device) for c in negatives],
        )


def _false_negative_masks(
    ids: RowTextIds, labels: Tensor, reverse: bool
) -> tuple[Tensor, Tensor | None]:
    """Masks of columns sharing a text with the row (its anchor or positive), ids gathered."""
    anchors, positives = all_gather_no_grad(ids.anchors), all_gather_no_grad(ids.positives)
    negatives = [all_gather_no_grad(n) for n in ids.negatives]
    rows = torch.stack([ids.positives, ids.anchors], dim=1)
    # a positive column stands for its whole row (its positive and its anchor); a hard negative
    # column only for its own text (another row's negative of the same anchor is a true negative)
    pair_cols = torch.stack([positives, anchors], dim=1)
    cols = torch.cat([pair_cols, *[torch.stack([n, n], dim=1) for n in negatives]])
    mask = duplicate_mask(rows, cols, labels)
    return mask, duplicate_mask(rows, pair_cols, labels) if reverse else None


def gathered_info_nce(
    anchors: Tensor,
    positives: Tensor,
    negatives: list[Tensor] | None = None,
    *,
    temperature: float | None = None,
    scale: float | None = None,
    hard_negative_weight: float = 0.0,
    symmetric: bool = False,
    ids: RowTextIds | None = None,
) -> dict[str, Tensor]:
    """InfoNCE of the local rows against the positives (and hard negatives) of all processes.

    Returns ``{"loss": mean over local rows, "accuracy": detached}``. One process: plain
    in-batch InfoNCE. ``W`` processes with equal slices: the per-process losses average to the
    one-process loss, and (with DDP's gradient averaging) the gradients are equal too
    (see :mod:`contrasent.train.distributed`). ``ids`` switches on false-negative masking.
    """
    negatives = negatives or []
    b = anchors.shape[0]
    labels = row_offset(b) + torch.arange(b, device=anchors.device)
    cands = all_gather_with_grad(positives)
    negs = [all_gather_with_grad(n) for n in negatives]
    pool = all_gather_with_grad(anchors) if symmetric else None
    mask = rev_mask = None
    if ids is not None:
        mask, rev_mask = _false_negative_masks(ids, labels, reverse=symmetric)
    loss, logits, labels = info_nce_with_logits(
        anchors,
        cands,
        temperature=temperature,
        scale=scale,
        hard_negatives=negs or None,
        hard_negative_weight=hard_negative_weight,
        symmetric=symmetric,
        labels=labels,
        mask=mask,
        anchor_pool=pool,
        reverse_mask=rev_mask,
    )
    return {"loss": loss, "accuracy": in_batch_accuracy(logits, labels)}


def in_batch_loss(
    embeddings: list[Tensor],
    anchors: list[str],
    positives: list[str],
    negatives: list[list[str]],
    *,
    dedup: str,
    **info_nce_options: Any,
) -> dict[str, Tensor]:
    """:func:`gathered_info_nce` on ``[anchor, positive, *negative]`` embeddings, masking false
    negatives by text when ``dedup == "mask"`` (the texts are the rows the embeddings came from).
    The ``loss`` of every in-batch objective here (SimCSE unsup/sup, pairs)."""
    a, p, *n = embeddings
    ids = RowTextIds.of(anchors, positives, negatives, a.device) if dedup == "mask" else None
    return gathered_info_nce(a, p, n, ids=ids, **info_nce_options)


class PairsInBatch(InBatchObjective):
    """MultipleNegativesRanking / the "1B sentence pairs" recipe (Reimers et al., Flax community
    week 2021, ``flax-sentence-embeddings``; the loss of Henderson et al., 2017).

    Cosine similarities scaled by 20 (the trainer's ``--scale``), cross-entropy against the
    row's positive among all positives (and hard-negative columns) of the global batch.
    ``symmetric``: ``(loss_a + loss_b) / 2`` ("Symmetric loss as in CLIP" in the 1B
    ``train_script.py``); that script uses it for 2-column batches only and the one-way loss for
    (anchor, positive, negative) batches, which is ``symmetric="auto"``.
    ``dedup="mask"``: the 1B trainer never puts a text twice in a global batch (its producer
    skips such rows); we keep the rows and mask every column that shares a text with the row
    (anchor or positive), which removes the same false negatives without changing batch sizes.
    """

    batch_type = PairBatch

    def __init__(
        self,
        scale: float | None = None,
        temperature: float | None = None,
        symmetric: bool | Literal["auto"] = False,
        dedup: Literal["mask", "none"] = "mask",
        hard_negative_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if scale is None and temperature is None:
            scale = 20.0
        try:
            logit_scale(temperature, scale)
        except ValueError as err:
            raise UserError(f"objective pairs: {err}") from None
        if dedup not in DEDUP:
            raise UserError(f"objective pairs: dedup must be one of {DEDUP}, got {dedup!r}")
        if symmetric not in (True, False, "auto"):
            raise UserError(
                f"objective pairs: symmetric must be true, false or 'auto', got {symmetric!r}"
            )
        self.scale, self.temperature = scale, temperature
        self.symmetric, self.dedup = symmetric, dedup
        self.hard_negative_weight = hard_negative_weight

    def setup(self, encoder: Any) -> None:
        """No training-only head; present so every objective can be set up the same way."""

    def views(self, batch: PairBatch) -> list[list[str]]:
        return [batch.anchors, batch.positives, *batch.negatives]

    def loss(self, embeddings: list[Tensor], batch: PairBatch) -> dict[str, Tensor]:
        symmetric = not batch.negatives if self.symmetric == "auto" else bool(self.symmetric)
        return in_batch_loss(
            embeddings,
            batch.anchors,
            batch.positives,
            batch.negatives,
            dedup=self.dedup,
            temperature=self.temperature,
            scale=self.scale,
            hard_negative_weight=self.hard_negative_weight,
            symmetric=symmetric,
        )

    def config_dict(self) -> dict[str, Any]:
        return {
            "name": "pairs",
            "scale": self.scale,
            "temperature": self.temperature,
            "symmetric": self.symmetric,
            "dedup": self.dedup,
            "hard_negative_weight": self.hard_negative_weight,
        }
