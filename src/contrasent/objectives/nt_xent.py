"""DeCLUTR's contrastive loss as pure functions: NT-Xent over anchors and averaged positives.

The reference (``declutr/model.py``, ``declutr/losses/pytorch_metric_learning.py``) embeds every
anchor and every positive span (mean pooling), averages the ``num_positives`` positive
embeddings of each anchor (``torch.mean`` over the raw pooled vectors, before any
normalisation; "positives are represented by their mean embedding"), then feeds
``torch.cat([anchors, mean_positives])`` with labels ``cat([ids, ids])`` to
pytorch-metric-learning's ``NTXentLoss(temperature=0.05)``. With ``B`` anchors in the (gathered)
batch, ``z = [a_1 .. a_B, p_1 .. p_B]``, each ``z_k`` has one positive, its partner ``z_k+``
(``a_i`` <-> ``p_i``), and every other vector but itself is a negative (``2B - 2`` of them,
the other anchors of the same document and their positives included)::

    L = 1 / (2B) * sum_k  -log( exp(cos(z_k, z_k+) / t) / sum_{l != k} exp(cos(z_k, z_l) / t) )

i.e. the mean over both directions of every pair (the library's ``MeanReducer`` over its
``2B`` positive pairs). The library adds ``finfo.tiny`` inside the log; that is below float
resolution here and left out.

Across processes, each process passes its local anchors and positives and the gathered pools
(:func:`gathered_nt_xent`): its ``2b`` local rows are scored against all ``2N`` vectors, the
loss is the mean over local rows, and the mean of the per-process losses is ``L``. With
``all_gather_with_grad`` and DDP's gradient averaging the gradient is exactly ``dL/dtheta`` (see
``contrasent.train.distributed``). The reference instead computes the whole ``L`` on every
replica from gathered copies that carry gradient only for the local rows; DDP's averaging then
divides the contrastive gradient by ``N`` GPUs, which its ``scale_fix`` multiplies back (the
paper's configs set ``scale_fix: false``, i.e. ran with the 1/N gradient). Nothing here scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gathered_nt_xent", "mean_positives", "nt_xent", "nt_xent_with_logits"]

TEMPERATURE = 0.05  # the reference config's NTXentLoss temperature


def mean_positives(positives: Tensor, num_positives: int) -> Tensor:
    """``[R * P, H]`` positive embeddings (anchor-major) -> ``[R, H]``, the mean per anchor."""
    if num_positives < 1 or positives.shape[0] % num_positives:
        raise ValueError(
            f"{positives.shape[0]} positive rows is not a multiple of num_positives {num_positives}"
        )
    return positives.reshape(-1, num_positives, positives.shape[-1]).mean(dim=1)


def nt_xent_with_logits(
    anchors: Tensor,
    positives: Tensor,
    *,
    temperature: float = TEMPERATURE,
    anchor_pool: Tensor | None = None,
    positive_pool: Tensor | None = None,
    offset: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """NT-Xent of the local pairs ``(anchors[i], positives[i])`` against the pools.

    ``anchors``/``positives`` are ``[b, H]`` (positives already averaged: :func:`mean_positives`).
    The pools are the ``[N, H]`` gathered anchors/positives of every process (default: the local
    ones, ``N = b``), the local rows being pool rows ``offset .. offset + b``. Returns
    ``(loss, logits, labels)``: the mean over the ``2b`` local rows (anchors first, then
    positives), their ``[2b, 2N]`` logits (columns: anchor pool, then positive pool; a row's own
    column is ``-inf``) and each row's positive column.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if anchors.shape != positives.shape:
        raise ValueError(f"anchors {tuple(anchors.shape)} and positives differ in shape")
    a_pool = anchors if anchor_pool is None else anchor_pool
    p_pool = positives if positive_pool is None else positive_pool
    if a_pool.shape != p_pool.shape:
        raise ValueError("the anchor and positive pools differ in shape")
    b, n = anchors.shape[0], a_pool.shape[0]
    if not 0 <= offset <= n - b:
        raise ValueError(f"offset {offset} puts {b} local rows outside a pool of {n}")
    rows = F.normalize(torch.cat([anchors, positives]), dim=-1)
    cols = F.normalize(torch.cat([a_pool, p_pool]), dim=-1)
    logits = rows @ cols.T / temperature
    local = offset + torch.arange(b, device=anchors.device)
    own = torch.cat([local, n + local])  # each row's own column
    labels = torch.cat([n + local, local])  # its partner's column
    logits = logits.index_put((torch.arange(2 * b, device=logits.device), own), _neg_inf(logits))
    return F.cross_entropy(logits, labels), logits, labels


def _neg_inf(t: Tensor) -> Tensor:
    return torch.tensor(float("-inf"), dtype=t.dtype, device=t.device)


def nt_xent(anchors: Tensor, positives: Tensor, **options) -> Tensor:
    """The loss of :func:`nt_xent_with_logits` (same options) alone."""
    return nt_xent_with_logits(anchors, positives, **options)[0]


def gathered_nt_xent(
    anchors: Tensor, positives: Tensor, temperature: float = TEMPERATURE
) -> dict[str, Tensor]:
    """:func:`nt_xent_with_logits` of the local rows against every process's rows.

    ``anchors``/``positives`` are this process's ``[b, H]`` (equal ``b`` on every process).
    Returns ``{"loss": mean over local rows, "accuracy": detached share of rows whose
    highest logit is their partner}``. One process: the plain loss.
    """
    try:  # the Engine v2 home of the helpers; the train/ module before it
        from contrasent.distributed import all_gather_with_grad, row_offset
    except ImportError:
        from contrasent.train.distributed import all_gather_with_grad, row_offset
    loss, logits, labels = nt_xent_with_logits(
        anchors,
        positives,
        temperature=temperature,
        anchor_pool=all_gather_with_grad(anchors),
        positive_pool=all_gather_with_grad(positives),
        offset=row_offset(anchors.shape[0]),
    )
    accuracy = (logits.detach().argmax(dim=-1) == labels).float().mean()
    return {"loss": loss, "accuracy": accuracy}
