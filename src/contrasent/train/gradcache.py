"""Gradient cache for every objective that splits into views / embed / loss.

Gao, Zhang, Han & Callan (2021), "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (RepL4NLP). An in-batch contrastive loss couples every embedding of the batch, so the batch
cannot simply be split like a per-example loss: splitting it (gradient accumulation) shrinks the
set of negatives. The gradient cache keeps the full batch *in the loss* while only one mini-batch
of texts is ever held *in the encoder's graph*:

1. run every view in mini-batches of at most ``mini_batch_size`` texts (a mini-batch never mixes
   two views: each has its own augmentation and mode) without a graph, recording the global RNG
   state before each one. With ``train.length_buckets`` on, a view's rows are sorted by token
   count before they are cut, so each mini-batch is a length bucket of its own (padded to rows
   of about its length; not split again): the cache's bucketing is over the whole batch, not
   inside each mini-batch. Which rows share a pass changes the dropout masks they draw, not
   their distribution (as ``length_buckets`` itself);
2. make each view's concatenated outputs (back in row order) a float32 (or float64) leaf, compute ``objective.loss`` on the full
   matrices and backpropagate to the leaves only: this yields d loss / d output for every text
   (the "cache"), and the gradients of any parameter the loss itself holds (e.g. a classifier);
3. re-run each mini-batch *with* a graph after restoring its RNG state, so dropout and the view's
   augmentation draw the same masks as in step 1 (a different mask is a different positive), and
   backpropagate ``dot(output, cached_gradient)``. By the chain rule the parameter gradients are
   exactly those of one backward through all mini-batch forwards.

Per-row losses that are views too (the MLM loss: ``[rows, 2]`` sums and counts) go through the
same three steps. Memory: activations of one mini-batch instead of the whole batch, and the
loss's similarity matrix in anchor chunks (``functional.chunked_info_nce``); cost: one extra
forward. Under several processes every pass runs without DDP's hooks and the caller averages the
gradients once (``distributed.average_gradients``): the passes use different parameters, which
DDP's per-forward bookkeeping does not model.

Randomness inside ``objective.embed`` must come from torch's global generators (CPU, and CUDA on
the encoder's device) or from generators keyed by the view's rows: the former are recorded and
replayed, the latter are the same by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from contrasent.model.passes import rows_of
from contrasent.objectives.base import Objective, View, loss_record
from contrasent.objectives.functional import fp32

LossDict = dict[str, torch.Tensor]


@dataclass
class RngState:
    """Torch's CPU generator state and, on CUDA, the generator state of one device."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; the global generators are restored afterwards."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@dataclass
class MiniBatch:
    """One encoder pass of the cache: rows ``rows`` of one view (in this order), tokenized."""

    view: View
    rows: list[int]
    features: dict[str, torch.Tensor]
    rng: RngState | None = None


def pass_rows(lengths: Sequence[int], size: int, by_length: bool) -> list[list[int]]:
    """The rows of each pass over one view (pure): chunks of at most ``size`` rows, consecutive
    in row order, or (``by_length``) consecutive in the order of token counts, longest first
    (ties in row order), so that each pass is padded only to rows of about its own length.

    Sorting is the cache's length bucketing: a pass of ``size`` rows of similar length is one
    bucket, large enough to keep the matmuls efficient, where splitting each consecutive chunk
    again (``Encoder.length_buckets``) would run many small passes.
    """
    if size < 1:
        raise ValueError(f"mini-batch size must be >= 1, got {size}")
    rows = range(len(lengths))
    order = sorted(rows, key=lambda i: -lengths[i]) if by_length else list(rows)
    return [order[a : a + size] for a in range(0, len(order), size)]


def mini_batches(
    encoder: Any, views: list[View], size: int, max_length: int | None
) -> tuple[list[MiniBatch], bool]:
    """Every view's passes (never across two views), tokenized once per view.

    With the encoder's ``length_buckets`` on (> 1) and right padding, rows are sorted by token
    count before they are cut (:func:`pass_rows`) and each pass runs as one bucket; otherwise
    consecutive chunks (each padded to its own longest row all the same). Returns the passes and
    whether they were sorted.
    """
    right = getattr(encoder.tokenizer, "padding_side", "right") != "left"
    by_length = right and getattr(encoder, "length_buckets", 1) > 1
    out = []
    for view in views:
        if not right:  # trimming columns would cut left padding's real tokens: one call each
            for rows in pass_rows([0] * len(view), size, False):
                sub = view.take(rows)
                out.append(MiniBatch(sub, rows, encoder.tokenize(sub.texts, max_length)))
            continue
        feats = encoder.tokenize(view.texts, max_length)
        mask = feats["attention_mask"]
        width, lengths = mask.shape[1], mask.sum(dim=1).tolist()
        for rows in pass_rows(lengths, size, by_length):
            index = torch.as_tensor(rows, device=mask.device)
            longest = max(lengths[i] for i in rows)
            part = {k: rows_of(v, index, width, longest) for k, v in feats.items()}
            out.append(MiniBatch(view.take(rows), rows, part))
    return out, by_length


def _nullcontext() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def gradcache_step(
    encoder: Any,
    objective: Objective,
    batch: Any,
    mini_batch_size: int,
    *,
    max_length: int | None = None,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    loss_scale: float = 1.0,
    autocast: Callable[[], contextlib.AbstractContextManager] = _nullcontext,
    check_loss: Callable[[LossDict], None] | None = None,
) -> LossDict:
    """One forward/backward of ``objective`` on ``batch`` under a gradient cache.

    Args:
        encoder: the (unwrapped) encoder.
        objective: the (unwrapped) objective; ``supports_gradient_cache`` must be true.
        batch: this process's batch (the objective gathers across processes inside ``loss``).
        mini_batch_size: texts per encoder pass, inside each view.
        max_length: training truncation (``data.max_seq_length``).
        backward: how to backpropagate the loss (``accelerator.backward`` applies the fp16 loss
            scale; the cached gradients then carry it, so the replay's backward must not).
        loss_scale: multiplies the loss before ``backward`` (``1 / grad_accum``).
        autocast: mixed-precision context for every forward.
        check_loss: called with the loss record before any backward (NaN guard).

    Returns:
        The loss record (``"loss"`` and every named part), detached.
    """
    if not objective.supports_gradient_cache:
        raise ValueError(f"{type(objective).__name__} does not support the gradient cache")
    views = objective.views(batch)
    passes, sorted_ = mini_batches(encoder, views, mini_batch_size, max_length)
    # a length-sorted pass is a bucket already: split no further
    one_pass = encoder.one_pass if sorted_ else contextlib.nullcontext

    # 1. outputs without a graph; each pass's RNG state is kept for the replay
    chunks: dict[str, list[torch.Tensor]] = {v.name: [] for v in views}
    rows: dict[str, list[int]] = {v.name: [] for v in views}
    with torch.no_grad(), one_pass():
        for p in passes:
            p.rng = RngState.capture(encoder.device)
            with autocast():
                out = objective.embed(encoder, p.view, p.features)
            chunks[p.view.name].append(fp32(out))
            rows[p.view.name] += p.rows

    # 2. full-batch loss on float32 leaves in row order: the cache holds d loss / d output
    leaves = {k: _in_row_order(torch.cat(v), rows[k]).requires_grad_() for k, v in chunks.items()}
    with autocast():
        record = loss_record(objective.loss(leaves, batch))
    if check_loss is not None:
        check_loss(record)
    backward(record["loss"] * loss_scale)

    # 3. replay each pass with a graph and push its cached gradient through the encoder
    with one_pass():
        for p in passes:
            grad = leaves[p.view.name].grad
            if grad is None:  # the loss does not depend on this view
                continue
            with p.rng.replay(), autocast():
                out = objective.embed(encoder, p.view, p.features)
            index = torch.as_tensor(p.rows, device=grad.device)
            torch.dot(fp32(out).flatten(), grad.index_select(0, index).flatten()).backward()
    return {k: v.detach() for k, v in record.items()}


def _in_row_order(outputs: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``outputs`` [N, ...] of the passes' rows ``rows`` (a permutation of 0..N-1), put back in
    row order: ``result[rows[j]] = outputs[j]``."""
    if rows == list(range(len(rows))):
        return outputs
    inverse = torch.empty(len(rows), dtype=torch.long, device=outputs.device)
    inverse[torch.as_tensor(rows, device=outputs.device)] = torch.arange(
        len(rows), device=outputs.device
    )
    return outputs.index_select(0, inverse)
