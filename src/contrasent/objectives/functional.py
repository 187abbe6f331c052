"""Pure contrastive math: InfoNCE with in-batch negatives, Wang & Isola diagnostics, text ids.

Everything here is a function of tensors (no encoder, no process group), so each piece is tested
against a hand computation written with explicit loops.

Conventions of :func:`info_nce`:

* ``anchors`` [B, H] are the rows whose loss is computed (on several processes: the *local* rows);
  ``candidates`` [N, H] is the pool they are scored against (on several processes: the positives of
  *every* process, gathered). Row ``i``'s positive is ``candidates[labels[i]]``; ``labels``
  defaults to ``arange(B)``, which is right only when the candidates are not gathered.
* Hard negatives are extra columns after the candidates, one block per negative column, each block
  laid out like the candidates (row ``i``'s own hard negative in block ``k`` sits at
  ``N + k * N + labels[i]``), as SimCSE's ``torch.cat([cos_sim, z1_z3_cos], 1)``.
* The loss is the mean over the given rows. Under cross-process gathering each process passes
  its local rows and the mean over processes of the per-process losses equals the one-process
  loss over the whole batch (see :mod:`contrasent.train.distributed` for the gradient argument).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def logit_scale(temperature: float | None = None, scale: float | None = None) -> float:
    """``1 / temperature`` (SimCSE, 0.05) or ``scale`` (1B-pairs trainer, 20): exactly one."""
    if (temperature is None) == (scale is None):
        raise ValueError("give exactly one of temperature (SimCSE: 0.05) or scale (1B: 20)")
    if temperature is not None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return 1.0 / temperature
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return float(scale)


def fp32(x: Tensor) -> Tensor:
    """``x`` in float32 (a no-op for float32 and float64 inputs)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def cosine_logits(queries: Tensor, keys: Tensor, scale: float) -> Tensor:
    """``scale * cos(q_i, k_j)`` for every pair: [Q, K], always in float32 (or float64).

    Autocast is switched off here: in bf16 the resolution near cos 1 is about 0.004, i.e. 0.08
    at scale 20, as large as the differences the loss has to rank; the normalisation, the
    matmul and the cross-entropy after it run in full precision (as sentence-transformers and
    SimCSE do under fp16 only by accident of their op lists)."""
    with torch.autocast(queries.device.type, enabled=False):
        q = F.normalize(fp32(queries), dim=-1)
        k = F.normalize(fp32(keys), dim=-1)
        return scale * q @ k.T.to(q.dtype)


def _hard_negative_blocks(hard_negatives: Tensor | Sequence[Tensor] | None, n: int) -> list[Tensor]:
    if hard_negatives is None:
        return []
    if isinstance(hard_negatives, Tensor):
        if hard_negatives.shape[0] % n:
            raise ValueError(
                f"{hard_negatives.shape[0]} hard-negative rows is not a multiple of {n} candidates"
            )
        return list(hard_negatives.split(n))
    blocks = list(hard_negatives)
    for b in blocks:
        if b.shape[0] != n:
            raise ValueError(f"a hard-negative block has {b.shape[0]} rows, candidates have {n}")
    return blocks


def _default_labels(b: int, labels: Tensor | None, device: torch.device) -> Tensor:
    if labels is None:
        return torch.arange(b, device=device)
    if labels.shape != (b,):
        raise ValueError(f"labels must have shape ({b},), got {tuple(labels.shape)}")
    return labels.to(device=device, dtype=torch.long)


def _apply_mask(logits: Tensor, mask: Tensor | None, labels: Tensor) -> Tensor:
    if mask is None:
        return logits
    mask = mask.to(device=logits.device, dtype=torch.bool)
    b, c = logits.shape
    if mask.shape[0] != b or mask.shape[1] > c:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not fit logits {(b, c)}")
    if mask.shape[1] < c:  # a mask over the candidate block only: hard negatives stay in
        mask = F.pad(mask, (0, c - mask.shape[1]), value=False)
    if mask.gather(1, labels[:, None]).any():
        raise ValueError("the mask excludes a row's own positive")
    return logits.masked_fill(mask, float("-inf"))


def info_nce_logits(
    anchors: Tensor,
    candidates: Tensor,
    *,
    scale: float,
    hard_negatives: Tensor | Sequence[Tensor] | None = None,
    hard_negative_weight: float = 0.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The [B, N + K*N] logits of the anchor->candidates direction, and the labels.

    ``hard_negative_weight`` is SimCSE's ``--hard_negative_weight``, "the logarithm of the weight"
    (SimCSE README; ``cl_forward`` adds it to the logit *after* the division by the temperature,
    only at the row's own hard negative: ``cos_sim + weights``). 0 means weight 1.
    """
    b, n = anchors.shape[0], candidates.shape[0]
    labels = _default_labels(b, labels, anchors.device)
    blocks = _hard_negative_blocks(hard_negatives, n)
    logits = cosine_logits(anchors, torch.cat([candidates, *blocks]), scale)
    if blocks and hard_negative_weight != 0.0:
        bias = torch.zeros_like(logits)
        rows = torch.arange(b, device=logits.device)
        for k in range(len(blocks)):
            bias[rows, n + k * n + labels] = hard_negative_weight
        logits = logits + bias
    return _apply_mask(logits, mask, labels), labels


def info_nce(anchors: Tensor, candidates: Tensor, **options: Any) -> Tensor:
    """The mean InfoNCE loss: :func:`info_nce_with_logits` (same options) without the logits."""
    return info_nce_with_logits(anchors, candidates, **options)[0]


def info_nce_with_logits(
    anchors: Tensor,
    candidates: Tensor,
    temperature: float | None = None,
    scale: float | None = None,
    hard_negatives: Tensor | Sequence[Tensor] | None = None,
    hard_negative_weight: float = 0.0,
    symmetric: bool = False,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    anchor_pool: Tensor | None = None,
    reverse_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """InfoNCE over cosine similarities with in-batch (and optional hard) negatives.

    Returns ``(loss, logits, labels)``: the mean cross-entropy over the ``anchors`` rows, and the
    anchor->candidates logits and labels it used (a caller reporting accuracy need not compute
    the similarity matrix again). With ``symmetric`` the result is
    ``(loss_a + loss_b) / 2`` as in the 1B-pairs trainer ("Symmetric loss as in CLIP", same scale),
    where ``loss_b`` scores each row's positive ``candidates[labels[i]]`` against the anchors: the
    given ``anchor_pool`` (the gathered anchors, laid out like the candidates so that row ``i``'s
    anchor is ``anchor_pool[labels[i]]``) or, without it, ``anchors`` themselves (label ``i``).
    Hard negatives take no part in ``loss_b`` (they are not anchors).

    ``mask`` (bool, [B, N] or [B, N + K*N]) and ``reverse_mask`` ([B, len(anchor_pool)]) remove
    logits (set to -inf), e.g. false negatives from duplicated texts; a row's positive must not
    be masked.
    """
    s = logit_scale(temperature, scale)
    logits, labels = info_nce_logits(
        anchors,
        candidates,
        scale=s,
        hard_negatives=hard_negatives,
        hard_negative_weight=hard_negative_weight,
        labels=labels,
        mask=mask,
    )
    loss = F.cross_entropy(logits, labels)
    if not symmetric:
        return loss, logits, labels
    pool = anchors if anchor_pool is None else anchor_pool
    rev_labels = (
        torch.arange(len(anchors), device=anchors.device) if anchor_pool is None else labels
    )
    rev = _apply_mask(cosine_logits(candidates[labels], pool, s), reverse_mask, rev_labels)
    return (loss + F.cross_entropy(rev, rev_labels)) / 2, logits, labels


#: anchor rows per chunk of the similarity matrix (see :func:`chunked_info_nce`)
LOSS_CHUNK_ROWS = 1024

MaskFn = Callable[[int, int], "Tensor | None"]


def _chunk_ce(
    rows: Tensor,
    pool: Tensor,
    labels: Tensor,
    scale: float,
    bias_cols: Tensor | None,
    bias: float,
    mask: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy SUM and correct-count of ``rows`` against ``pool`` (one chunk)."""
    logits = cosine_logits(rows, pool, scale)
    if bias_cols is not None:
        logits = logits.index_put(
            (torch.arange(len(rows), device=logits.device)[:, None], bias_cols),
            torch.full(bias_cols.shape, bias, device=logits.device, dtype=logits.dtype),
            accumulate=True,
        )
    logits = _apply_mask(logits, mask, labels)
    with torch.autocast(logits.device.type, enabled=False):
        ce = F.cross_entropy(logits, labels, reduction="sum")
    correct = (logits.detach().argmax(dim=-1) == labels).sum()
    return ce, correct


def chunked_info_nce(
    rows: Tensor,
    pool: Tensor,
    labels: Tensor,
    *,
    scale: float,
    hard_negative_cols: Tensor | None = None,
    hard_negative_weight: float = 0.0,
    mask_fn: MaskFn | None = None,
    chunk_rows: int = LOSS_CHUNK_ROWS,
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of ``rows`` [B, H] against ``pool`` [C, H] (row ``i``'s positive at
    ``pool[labels[i]]``) and the detached accuracy, computed in chunks of ``chunk_rows`` rows.

    The B x C logits are never held at once: each chunk's logits are recomputed in the backward
    pass (activation checkpointing), so the loss step needs O(chunk_rows x C) memory, as
    sentence-transformers' cached losses compute theirs mini-batch by mini-batch; the result is
    the same as one pass. ``hard_negative_cols`` [B, K] are the columns getting SimCSE's
    log-weight; ``mask_fn(start, stop)`` gives the bool mask [stop - start, C] of a chunk.
    """
    from torch.utils.checkpoint import checkpoint

    b = rows.shape[0]
    total = rows.new_zeros((), dtype=torch.float32 if rows.dtype != torch.float64 else rows.dtype)
    correct = torch.zeros((), dtype=torch.long, device=rows.device)
    needs_graph = torch.is_grad_enabled() and (rows.requires_grad or pool.requires_grad)
    for start in range(0, b, max(1, chunk_rows)):
        stop = min(b, start + max(1, chunk_rows))
        args = (
            rows[start:stop],
            pool,
            labels[start:stop],
            scale,
            None if hard_negative_cols is None else hard_negative_cols[start:stop],
            hard_negative_weight,
            None if mask_fn is None else mask_fn(start, stop),
        )
        if needs_graph and b > chunk_rows:
            ce, ok = checkpoint(_chunk_ce, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            ce, ok = _chunk_ce(*args)
        total = total + ce
        correct = correct + ok
    return total / b, correct.float() / b


def in_batch_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose highest logit is their positive (a detached diagnostic)."""
    return (logits.detach().argmax(dim=-1) == labels).float().mean()


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0, normalize: bool = True) -> Tensor:
    """Wang & Isola (2020) alignment: ``E ||f(x) - f(y)||_2^alpha`` over positive pairs."""
    if normalize:
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2.0, normalize: bool = True) -> Tensor:
    """Wang & Isola (2020) uniformity: ``log E_{i<j} exp(-t ||f(x_i) - f(x_j)||_2^2)``."""
    if x.shape[0] < 2:
        raise ValueError("uniformity needs at least two embeddings")
    if normalize:
        x = F.normalize(x, dim=-1)
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def text_ids(texts: Sequence[str], device: torch.device | str | None = None) -> Tensor:
    """Stable int64 ids of texts (blake2b, 8 bytes): equal texts, equal ids, on every process.

    Python's ``hash`` is salted per process, so it cannot be compared after an all-gather.
    """
    ids = [
        int.from_bytes(
            hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "big", signed=True
        )
        for t in texts
    ]
    return torch.tensor(ids, dtype=torch.long, device=device)


def duplicate_mask(row_ids: Tensor, cand_ids: Tensor, labels: Tensor | None = None) -> Tensor:
    """Bool [B, C]: candidate ``j`` is a false negative of row ``i`` (a duplicated text).

    ``row_ids`` is [B] or [B, R]: the text ids of each row (e.g. its positive and its anchor).
    ``cand_ids`` is [C] or [C, S]: the text ids tied to each column (e.g. for a positive column,
    that positive and the anchor of its row). Column ``j`` is masked for row ``i`` when the two
    id sets intersect and ``j`` is not the row's positive ``labels[i]`` (default ``i``).
    """
    if row_ids.dim() == 1:
        row_ids = row_ids[:, None]
    if cand_ids.dim() == 1:
        cand_ids = cand_ids[:, None]
    labels = _default_labels(row_ids.shape[0], labels, row_ids.device)
    same = (row_ids[:, None, :, None] == cand_ids[None, :, None, :]).flatten(2).any(-1)
    same[torch.arange(len(labels), device=labels.device), labels] = False
    return same
