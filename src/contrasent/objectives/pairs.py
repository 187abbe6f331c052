"""In-batch negatives over (anchor, positive[, negatives...]) pairs: the "1B pairs" recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from contrasent.data.batches import PairBatch
from contrasent.objectives.base import Objective, Parts, View
from contrasent.objectives.functional import logit_scale
from contrasent.objectives.inbatch import DEDUP, Guide, in_batch_parts


@dataclass
class PairsConfig:
    """Options of in-batch pair training.

    Attributes:
        scale: Multiplier of the cosine logits (the 1B trainer's ``--scale``, 20); exclusive
            with temperature (default 20 when neither is set).
        temperature: Softmax temperature instead of scale (scale = 1 / temperature).
        symmetric: Add the reverse direction, positive -> anchors ("as in CLIP"); "auto": only
            for batches without hard negatives, as the 1B train_script.
        dedup: "mask": columns sharing a text with the row (its anchor or positive) are not
            negatives; "none".
        hard_negative_weight: Log-weight added to each row's own hard-negative logits.
        guide_model: A second, frozen encoder (path or hub id; GISTEmbed, Solatorio 2024): an
            in-batch column it scores closer to the row's anchor than the row's own positive
            (minus guide_margin) is a likely false negative and is masked. None: no guide.
        guide_margin: GISTEmbed's absolute margin: mask when guide(anchor, column) >
            guide(anchor, positive) - guide_margin (0: anything the guide ranks above the
            positive).
    """

    scale: float | None = None
    temperature: float | None = None
    symmetric: bool | Literal["auto"] = False
    dedup: Literal["mask", "none"] = "mask"
    hard_negative_weight: float = 0.0
    guide_model: str | None = None
    guide_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.scale is None and self.temperature is None:
            self.scale = 20.0
        logit_scale(self.temperature, self.scale)  # ValueError: exactly one, > 0
        if self.dedup not in DEDUP:
            raise ValueError(f"dedup must be one of {DEDUP}, got {self.dedup!r}")
        if self.symmetric not in (True, False, "auto"):
            raise ValueError(f"symmetric must be true, false or 'auto', got {self.symmetric!r}")


class PairsInBatch(Objective):
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

    name = "pairs"
    method = "in-batch negatives on pairs (1B-pairs recipe)"
    Config = PairsConfig
    batch_type = PairBatch

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._guide: Any = None  # a frozen Encoder, deliberately not a submodule (never saved)
        self._dim = 0

    def setup(self, encoder: Any) -> None:
        if self.config.guide_model is None:
            return
        from contrasent.model.encoder import Encoder

        guide = Encoder.from_pretrained(self.config.guide_model, device=encoder.device).eval()
        guide.requires_grad_(False)
        self._guide, self._dim = guide, encoder.hidden_size

    def embed(self, encoder: Any, view: View, features: dict[str, Tensor]) -> Tensor:
        """The embedding, with the guide's embedding of the same texts appended when there is a
        guide (row-wise, no gradient: the gradient cache and the gathers carry it as is)."""
        out = encoder(features, augment=view.augment)
        if self._guide is None:
            return out
        with torch.no_grad():
            g = self._guide.encode(view.texts, batch_size=max(len(view.texts), 1), normalize=True)
        return torch.cat([out, torch.as_tensor(g, device=out.device, dtype=out.dtype)], 1)

    def views(self, batch: PairBatch) -> list[View]:
        negatives = [View(f"negative_{k}", col) for k, col in enumerate(batch.negatives)]
        return [View("anchor", batch.anchors), View("positive", batch.positives), *negatives]

    def loss(self, outputs: dict[str, Tensor], batch: PairBatch) -> Parts:
        c = self.config
        symmetric = not batch.negatives if c.symmetric == "auto" else bool(c.symmetric)
        k = len(batch.negatives)
        embs = [
            outputs["anchor"],
            outputs["positive"],
            *(outputs[f"negative_{i}"] for i in range(k)),
        ]
        guide = None
        if self._guide is not None:
            g = [e[:, self._dim :] for e in embs]
            embs = [e[:, : self._dim] for e in embs]
            guide = Guide(g[0], g[1], g[2:], c.guide_margin)
        return in_batch_parts(
            embs,
            batch.anchors,
            batch.positives,
            batch.negatives,
            dedup=c.dedup,
            temperature=c.temperature,
            scale=c.scale,
            hard_negative_weight=c.hard_negative_weight,
            symmetric=symmetric,
            guide=guide,
        )
