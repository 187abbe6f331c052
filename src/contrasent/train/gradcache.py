"""Gradient cache for every objective that splits into views / embed / loss.

Gao, Zhang, Han & Callan (2021), "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (RepL4NLP). An in-batch contrastive loss couples every embedding of the batch, so the batch
cannot simply be split like a per-example loss: splitting it (gradient accumulation) shrinks the
set of negatives. The gradient cache keeps the full batch *in the loss* while only one mini-batch
of texts is ever held *in the encoder's graph*:

1. run every view in mini-batches of at most ``mini_batch_size`` texts (a mini-batch never mixes
   two views: each has its own augmentation and mode) without a graph, recording the global RNG
   state before each one;
2. make each view's concatenated outputs a float32 (or float64) leaf, compute ``objective.loss`` on the full
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

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
    """One encoder pass of the cache: rows ``start:stop`` of one view, tokenized."""

    view: View
    start: int
    stop: int
    features: dict[str, torch.Tensor]
    rng: RngState


def mini_batches(
    views: list[View], size: int, tokenize: Callable[[list[str]], dict]
) -> list[MiniBatch]:
    """Consecutive chunks of at most ``size`` rows inside each view (never across two)."""
    if size < 1:
        raise ValueError(f"mini-batch size must be >= 1, got {size}")
    return [
        MiniBatch(view, a, min(a + size, len(view)), tokenize(view.texts[a : a + size]), None)
        for view in views
        for a in range(0, len(view), size)
    ]


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
    passes = mini_batches(views, mini_batch_size, lambda t: encoder.tokenize(t, max_length))

    # 1. outputs without a graph; each pass's RNG state is kept for the replay
    chunks: dict[str, list[torch.Tensor]] = {v.name: [] for v in views}
    with torch.no_grad():
        for p in passes:
            p.rng = RngState.capture(encoder.device)
            with autocast():
                out = objective.embed(encoder, p.view.slice(p.start, p.stop), p.features)
            chunks[p.view.name].append(fp32(out))

    # 2. full-batch loss on float32 leaves: the cache holds d loss / d output
    leaves = {k: torch.cat(v).requires_grad_() for k, v in chunks.items()}
    with autocast():
        record = loss_record(objective.loss(leaves, batch))
    if check_loss is not None:
        check_loss(record)
    backward(record["loss"] * loss_scale)

    # 3. replay each pass with a graph and push its cached gradient through the encoder
    for p in passes:
        grad = leaves[p.view.name].grad
        if grad is None:  # the loss does not depend on this view
            continue
        with p.rng.replay(), autocast():
            out = objective.embed(encoder, p.view.slice(p.start, p.stop), p.features)
        torch.dot(fp32(out).flatten(), grad[p.start : p.stop].flatten()).backward()
    return {k: v.detach() for k, v in record.items()}
