"""The objective contract shared by every method.

An objective is a small ``nn.Module`` with ``forward(encoder, batch) -> dict[str, Tensor]``
("loss" plus named parts that get logged) and ``config_dict()``. Heads used only in training
(SimCSE's MLP, TSDAE's decoder, an NLI classifier) are submodules of the objective, never of the
encoder, so saving the encoder never saves them.

In-batch objectives (:class:`InBatchObjective`) split ``forward`` into three steps so the training
loop can run them under a gradient cache:

1. ``views(batch)``: the groups of texts to embed (e.g. ``[texts, texts]`` for unsup SimCSE,
   ``[anchors, positives, negatives_0]`` for pairs/triplets);
2. ``embed(encoder, features)``: tokenized texts -> embeddings, with any training-only head;
3. ``loss(embeddings, batch)``: one embedding matrix per view -> loss dict.

The plain ``forward`` embeds all views in one encoder pass (as SimCSE does: the batch is
``[x; x]`` through the model once, so each copy gets its own dropout mask).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Objective(nn.Module):
    """Base class: subclasses implement ``forward`` and ``config_dict``."""

    #: the batch dataclass the objective consumes (``SentenceBatch`` or ``PairBatch``)
    batch_type: type = object

    def setup(self, encoder: nn.Module) -> None:
        """Build training-only heads that need the encoder's sizes; called before the optimizer."""

    def forward(self, encoder: nn.Module, batch: Any) -> dict[str, torch.Tensor]:  # noqa: D401
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        raise NotImplementedError


class InBatchObjective(Objective):
    """An objective whose loss depends on the whole batch of embeddings (gradient-cache ready)."""

    def views(self, batch: Any) -> list[list[str]]:
        raise NotImplementedError

    def embed(self, encoder: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embed one tokenized (mini-)batch; default: the encoder's pooled output."""
        return encoder(features)

    def auxiliary(self, encoder: nn.Module, batch: Any) -> torch.Tensor | None:
        """A per-example auxiliary loss (e.g. MLM) the gradient cache can run chunk-wise; none."""
        return None

    def combine(self, parts: dict[str, torch.Tensor], aux: torch.Tensor | None) -> dict:
        """Add the auxiliary loss to the contrastive parts (objectives with one override this)."""
        if aux is not None:
            raise NotImplementedError(f"{type(self).__name__} must define combine()")
        return parts

    def loss(self, embeddings: list[torch.Tensor], batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, encoder: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        views = self.views(batch)
        flat = [t for view in views for t in view]
        emb = self.embed(encoder, encoder.tokenize(flat))
        return self.loss(list(emb.split([len(v) for v in views])), batch)
