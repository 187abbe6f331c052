"""The in-batch losses every contrastive objective shares: InfoNCE (SimCSE unsup/sup, pairs) and
NT-Xent (ConSERT, DeCLUTR).

:func:`gathered_info_nce` scores this process's rows against the positives (and hard
negatives) of EVERY process, gathered with gradient (:mod:`contrasent.core.distributed`), so each row
is contrasted with the whole global batch whatever the number of processes, and the loss and
gradients equal one process holding the whole batch. The similarity matrix is computed in
anchor chunks (:func:`~contrasent.objectives.functional.chunked_info_nce`) in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from contrasent.core.distributed import all_gather_no_grad, all_gather_with_grad, row_offset
from contrasent.objectives.base import LossPart, Parts
from contrasent.objectives.functional import (
    LOSS_CHUNK_ROWS,
    chunked_info_nce,
    duplicate_mask,
    fp32,
    logit_scale,
    text_ids,
)

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


def _id_masks(ids: RowTextIds, labels: Tensor, symmetric: bool):
    """Chunk mask functions over the gathered columns: a column sharing a text with the row (its
    anchor or positive) is a false negative. A positive column stands for its whole row (its
    positive and its anchor); a hard-negative column only for its own text (another row's
    negative of the same anchor is a true negative)."""
    anchors, positives = all_gather_no_grad(ids.anchors), all_gather_no_grad(ids.positives)
    negatives = [all_gather_no_grad(n) for n in ids.negatives]
    rows = torch.stack([ids.positives, ids.anchors], dim=1)
    pair_cols = torch.stack([positives, anchors], dim=1)
    cols = torch.cat([pair_cols, *[torch.stack([n, n], dim=1) for n in negatives]])

    def forward(start: int, stop: int) -> Tensor:
        return duplicate_mask(rows[start:stop], cols, labels[start:stop])

    def reverse(start: int, stop: int) -> Tensor:
        return duplicate_mask(rows[start:stop], pair_cols, labels[start:stop])

    return forward, (reverse if symmetric else None)


@dataclass
class Guide:
    """A frozen guide encoder's embeddings of the local rows (GISTEmbed, Solatorio 2024): a
    column the guide scores closer to the row's anchor than the row's own positive (minus
    ``margin``) is a likely false negative and is masked."""

    anchors: Tensor
    positives: Tensor
    negatives: list[Tensor]
    margin: float = 0.0


def guide_mask(rows: Tensor, cols: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Bool [B, C]: ``cos_g(row i, col j) > cos_g(row i, col labels[i]) - margin``, the
    positive ``labels[i]`` itself never masked (GISTEmbed's absolute margin strategy)."""
    sims = F.normalize(fp32(rows), dim=-1) @ F.normalize(fp32(cols), dim=-1).T
    own = sims.gather(1, labels[:, None])
    mask = sims > own - margin
    mask[torch.arange(len(labels), device=labels.device), labels] = False
    return mask


def _guide_masks(guide: Guide, labels: Tensor, symmetric: bool):
    """Chunk mask functions of the guide over the gathered columns (as :func:`_id_masks`)."""
    pos = all_gather_no_grad(guide.positives)
    cols = torch.cat([pos, *[all_gather_no_grad(n) for n in guide.negatives]])
    forward = guide_mask(guide.anchors, cols, labels, guide.margin)
    reverse = None
    if symmetric:
        reverse = guide_mask(
            guide.positives, all_gather_no_grad(guide.anchors), labels, guide.margin
        )
    return forward, reverse


def _either(mask_fn, fixed: Tensor | None):
    """``mask_fn``'s chunk OR the rows ``start:stop`` of a precomputed mask (None: unchanged)."""
    if fixed is None:
        return mask_fn
    if mask_fn is None:
        return lambda start, stop: fixed[start:stop]
    return lambda start, stop: mask_fn(start, stop) | fixed[start:stop]


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
    guide: Guide | None = None,
    chunk_rows: int = LOSS_CHUNK_ROWS,
) -> tuple[Tensor, Tensor]:
    """``(loss, accuracy)``: InfoNCE of the local rows against the gathered pool.

    Loss: mean over local rows (W processes with equal slices: the per-process losses average
    to the one-process loss, and with DDP's gradient averaging the gradients are equal too).
    Columns: every process's positives, then one block per hard-negative column laid out like
    them (SimCSE's ``cat([cos_sim, z1_z3_cos], 1)``); ``hard_negative_weight`` is SimCSE's
    log-weight at each row's own hard negative. ``symmetric``: ``(loss_a + loss_b) / 2`` where
    ``loss_b`` scores each row's positive against the gathered anchors (1B-pairs "as in CLIP";
    hard negatives take no part in it). ``ids`` switches on false-negative masking by text,
    ``guide`` by a frozen guide encoder's similarities (both may be on).
    """
    s = logit_scale(temperature, scale)
    negatives = negatives or []
    b = anchors.shape[0]
    labels = row_offset(b) + torch.arange(b, device=anchors.device)
    cands = all_gather_with_grad(positives)
    n = cands.shape[0]
    pool = torch.cat([cands, *[all_gather_with_grad(x) for x in negatives]])
    hard_cols = None
    if negatives and hard_negative_weight != 0.0:
        offsets = n + n * torch.arange(len(negatives), device=anchors.device)
        hard_cols = labels[:, None] + offsets[None, :]
    mask_fn = rev_mask_fn = None
    if ids is not None:
        mask_fn, rev_mask_fn = _id_masks(ids, labels, symmetric)
    if guide is not None:
        fixed, rev_fixed = _guide_masks(guide, labels, symmetric)
        mask_fn, rev_mask_fn = _either(mask_fn, fixed), _either(rev_mask_fn, rev_fixed)
    loss, accuracy = chunked_info_nce(
        anchors,
        pool,
        labels,
        scale=s,
        hard_negative_cols=hard_cols,
        hard_negative_weight=hard_negative_weight,
        mask_fn=mask_fn,
        chunk_rows=chunk_rows,
    )
    if symmetric:
        anchor_pool = all_gather_with_grad(anchors)
        reverse, _ = chunked_info_nce(
            positives, anchor_pool, labels, scale=s, mask_fn=rev_mask_fn, chunk_rows=chunk_rows
        )
        loss = (loss + reverse) / 2
    return loss, accuracy


def gathered_nt_xent(
    first: Tensor,
    second: Tensor,
    *,
    temperature: float,
    chunk_rows: int = LOSS_CHUNK_ROWS,
) -> tuple[Tensor, Tensor]:
    """``(loss, accuracy)`` of NT-Xent (SimCLR; ConSERT and DeCLUTR) over the pairs
    ``(first[i], second[i])`` of the global batch.

    The ``2N`` vectors ``[first_1..first_N, second_1..second_N]`` (gathered over processes) each
    have their partner as positive and every other vector but themselves as negatives
    (``2N - 2``); the loss is the mean over the ``2N`` rows (this process: over its ``2b`` local
    rows, whose mean over processes is the one-process loss; no 1/W gradient scaling). Cosine
    logits over ``temperature`` in float32, in anchor chunks, as :func:`gathered_info_nce`.
    """
    s = logit_scale(temperature=temperature)
    b = first.shape[0]
    if second.shape != first.shape:
        raise ValueError(
            f"NT-Xent pairs differ in shape: {tuple(first.shape)}, {tuple(second.shape)}"
        )
    pool_a, pool_b = all_gather_with_grad(first), all_gather_with_grad(second)
    n = pool_a.shape[0]
    local = row_offset(b) + torch.arange(b, device=first.device)
    own = torch.cat([local, n + local])  # each row's own column: not a candidate
    labels = torch.cat([n + local, local])  # its partner's column

    def mask_fn(start: int, stop: int) -> Tensor:
        mask = torch.zeros(stop - start, 2 * n, dtype=torch.bool, device=first.device)
        mask[torch.arange(stop - start, device=first.device), own[start:stop]] = True
        return mask

    return chunked_info_nce(
        torch.cat([first, second]),
        torch.cat([pool_a, pool_b]),
        labels,
        scale=s,
        mask_fn=mask_fn,
        chunk_rows=chunk_rows,
    )


def in_batch_parts(
    embeddings: list[Tensor],
    anchors: list[str],
    positives: list[str],
    negatives: list[list[str]],
    *,
    dedup: str,
    guide: Guide | None = None,
    **info_nce_options: Any,
) -> Parts:
    """``{"contrastive": LossPart, "accuracy": detached}`` of :func:`gathered_info_nce` on
    ``[anchor, positive, *negative]`` embeddings, masking false negatives by text when
    ``dedup == "mask"`` (the texts are the rows the embeddings came from)."""
    a, p, *neg = embeddings
    ids = RowTextIds.of(anchors, positives, negatives, a.device) if dedup == "mask" else None
    loss, accuracy = gathered_info_nce(a, p, neg, ids=ids, guide=guide, **info_nce_options)
    return {"contrastive": LossPart(loss), "accuracy": accuracy}
