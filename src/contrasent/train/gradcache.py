"""Gradient cache for every in-batch objective.

Gao, Zhang, Han & Callan (2021), "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (RepL4NLP). An in-batch contrastive loss couples every embedding of the batch, so the batch
cannot simply be split like a per-example loss: splitting it (gradient accumulation) shrinks the
set of negatives. The gradient cache keeps the full batch *in the loss* while only one mini-batch
of texts is ever held *in the encoder's graph*:

1. embed every mini-batch of texts without a graph, recording the RNG state before each one;
2. make the concatenated embeddings a leaf tensor, compute ``objective.loss`` on the full matrices
   and backpropagate to that leaf only: this yields d loss / d embedding for every text (the
   "cache"), and the gradients of any parameter the loss itself holds;
3. re-encode each mini-batch *with* a graph after restoring its RNG state, so dropout draws the
   same masks as in step 1 (dropout is SimCSE's augmentation: a different mask is a different
   positive), and backpropagate ``dot(embedding, cached_gradient)``. By the chain rule the
   parameter gradients are exactly those of one backward through all mini-batch forwards.

Memory: activations of one mini-batch instead of the whole batch; cost: one extra forward.

Randomness inside ``objective.embed`` must come from torch's global generators (CPU, and CUDA on
the encoder's device): those are the ones recorded and replayed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from contrasent.objectives.base import InBatchObjective
from contrasent.train.batching import slice_batch

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


def chunk(texts: list[str], size: int) -> list[list[str]]:
    """Consecutive chunks of at most ``size`` texts (the last one may be shorter)."""
    if size < 1:
        raise ValueError(f"mini-batch size must be >= 1, got {size}")
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def _nullcontext() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def gradcache_step(
    model: nn.Module,
    encoder: nn.Module,
    objective: InBatchObjective,
    batch: Any,
    mini_batch_size: int,
    *,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    loss_scale: float = 1.0,
    no_sync: Callable[[], contextlib.AbstractContextManager] = _nullcontext,
    sync: bool = True,
    autocast: Callable[[], contextlib.AbstractContextManager] = _nullcontext,
    check_loss: Callable[[LossDict], None] | None = None,
) -> LossDict:
    """One forward/backward of ``objective`` on ``batch`` under a gradient cache.

    Args:
        model: what re-encodes a mini-batch with a graph: ``model(features=f)`` must return
            ``objective.embed(encoder, f)``. In training it is the (possibly DDP-wrapped)
            :class:`~contrasent.train.loop.TrainModule`, so DDP sees the forward it syncs on.
        encoder: the unwrapped encoder (tokenizes, and embeds without a graph in step 1).
        objective: the unwrapped in-batch objective.
        batch: this process's batch (the objective gathers across processes inside ``loss``).
        mini_batch_size: texts per encoder forward, over the flattened views.
        backward: how to backpropagate the loss (``accelerator.backward`` applies the fp16 loss
            scale; the cached gradients then carry it, so the surrogate backward must not).
        loss_scale: multiplies the loss before ``backward`` (``1 / grad_accum``).
        no_sync: context that suspends DDP's gradient all-reduce; entered for every mini-batch
            but the last (for all of them when ``sync`` is False: a non-final accumulation step).
        autocast: mixed-precision context for every forward.
        check_loss: called with the loss dict before any backward (NaN guard).

    Returns:
        The loss dict, detached (for logging).
    """
    views = objective.views(batch)
    flat = [t for view in views for t in view]
    sizes = [len(v) for v in views]
    features = [encoder.tokenize(texts) for texts in chunk(flat, mini_batch_size)]
    device = encoder.device

    # 1. embeddings without a graph; each mini-batch's RNG state is kept for the replay
    states, embs = [], []
    with torch.no_grad():
        for f in features:
            states.append(RngState.capture(device))
            with autocast():
                embs.append(objective.embed(encoder, f))

    # 2. full-batch loss on a leaf: the cache holds d loss / d embedding
    leaf = torch.cat(embs).detach().requires_grad_()
    with autocast():
        losses = objective.loss(list(leaf.split(sizes)), batch)
    if check_loss is not None:
        check_loss(losses)
    backward(losses["loss"] * loss_scale)
    if leaf.grad is None:  # a loss that does not depend on the embeddings
        cached = [torch.zeros_like(e) for e in embs]
    else:
        cached = list(leaf.grad.split([e.shape[0] for e in embs]))

    losses = _auxiliary(
        encoder,
        objective,
        batch,
        len(views),
        mini_batch_size,
        losses,
        backward=backward,
        loss_scale=loss_scale,
        check_loss=check_loss,
    )

    # 3. replay each mini-batch with a graph and push its cached gradient through the encoder
    last = len(features) - 1
    for i, (f, state, grad) in enumerate(zip(features, states, cached, strict=True)):
        ctx = no_sync() if (i < last or not sync) else contextlib.nullcontext()
        with ctx, state.replay():
            with autocast():
                emb = model(features=f)
            surrogate = torch.dot(emb.flatten().float(), grad.flatten().float())
            surrogate.backward()
    return {k: v.detach() for k, v in losses.items()}


def _auxiliary(
    encoder: nn.Module,
    objective: InBatchObjective,
    batch: Any,
    n_views: int,
    mini_batch_size: int,
    losses: LossDict,
    *,
    backward: Callable[[torch.Tensor], None],
    loss_scale: float,
    check_loss: Callable[[LossDict], None] | None,
) -> LossDict:
    """A per-example auxiliary loss (``objective.auxiliary(encoder, batch)``, e.g. SimCSE's MLM),
    run on row chunks of about ``mini_batch_size`` texts, each weighted by its share of the rows;
    ``objective.combine(parts, aux)`` adds it to the contrastive parts as its ``forward`` does
    (both are part of the InBatchObjective contract: no auxiliary by default, and a combine that
    refuses an auxiliary loss it was not taught to weight).
    Its gradients reach the parameters directly (it does not depend on the embeddings)."""
    n = len(batch)
    rows = max(1, mini_batch_size // max(n_views, 1))
    total = None
    for start in range(0, n, rows):
        sub = slice_batch(batch, start, min(start + rows, n))
        aux = objective.auxiliary(encoder, sub)
        if aux is None:  # the objective has no auxiliary loss
            return losses
        share = len(sub) / n
        weighted = objective.combine({"loss": aux.new_zeros(())}, aux)["loss"]  # weight * aux
        backward(weighted * share * loss_scale)
        total = aux.detach() * share if total is None else total + aux.detach() * share
    combined = objective.combine(dict(losses), total)
    if check_loss is not None:
        check_loss(combined)
    return combined
