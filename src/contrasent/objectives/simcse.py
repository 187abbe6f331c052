"""SimCSE (Gao, Yao & Chen, 2021. "SimCSE: Simple Contrastive Learning of Sentence Embeddings",
EMNLP 2021, arXiv:2104.08821), unsupervised and supervised.

Mapping of SimCSE's options to ours (``simcse/models.py``, ``train.py``):

* SimCSE's ``--pooler_type cls`` takes the raw [CLS] state (its BERT has no pooling layer) and
  puts a freshly initialised ``MLPLayer`` (Linear hidden->hidden + Tanh) over it during training.
  Here the encoder pools with ``cls_before_pooler`` (the raw [CLS]) and the objective owns the MLP
  (``mlp=True``). The MLP is never saved: the saved encoder embeds with the raw [CLS], which is
  exactly SimCSE's unsupervised setting ``--mlp_only_train`` evaluated with
  ``--pooler cls_before_pooler``.
* Supervised SimCSE keeps the MLP at test time (no ``--mlp_only_train``; the conversion script
  stores it as BERT's pooler and evaluation uses ``--pooler cls``). Our default for ``simcse_sup``
  is the same as unsup (MLP train-only, raw [CLS] saved): a deliberate deviation. To keep a
  trained dense+tanh at test time instead, use encoder pooling ``cls`` (BERT's own pooler layer,
  trained and saved with the encoder) with ``mlp=False``; that matches SimCSE's test-time
  architecture, but the layer starts from BERT's pretrained pooler rather than a random one.
* Distributed: SimCSE gathers z1, z2 (and z3) without gradient except for the local slice and
  every process computes the loss over all rows, so its gradient is ``1/W`` of the one-process
  gradient (harmless under AdamW). We compute the local rows against gathered candidates with
  gradient through the gather: the gradient equals one process with the whole batch.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from torch import Tensor, nn

from contrasent.data.batches import PairBatch, SentenceBatch
from contrasent.errors import UserError
from contrasent.objectives.base import InBatchObjective
from contrasent.objectives.functional import logit_scale
from contrasent.objectives.mlm import MLMAuxiliary, with_mlm
from contrasent.objectives.pairs import DEDUP, in_batch_loss

log = logging.getLogger(__name__)


def mlp_layer(encoder: Any) -> nn.Module:
    """SimCSE's ``MLPLayer`` (dense + tanh, hidden -> hidden), BERT-initialised like ``init_weights``."""
    h = encoder.hidden_size
    mlp = nn.Sequential(nn.Linear(h, h), nn.Tanh())
    nn.init.normal_(mlp[0].weight, std=getattr(encoder.model.config, "initializer_range", 0.02))
    nn.init.zeros_(mlp[0].bias)
    return mlp.to(device=encoder.device, dtype=encoder.model.dtype)


class _SimCSEBase(InBatchObjective):
    """Temperature, the training-only MLP, optional dedup masking and the MLM auxiliary."""

    name = ""

    def __init__(
        self,
        temperature: float = 0.05,
        mlp: bool = True,
        dedup: Literal["mask", "none"] = "none",
        do_mlm: bool = False,
        mlm_weight: float = 0.1,
        mlm_probability: float = 0.15,
        mlm_seed: int = 0,
    ) -> None:
        super().__init__()
        try:
            logit_scale(temperature=temperature)
        except ValueError as err:
            raise UserError(f"objective {self.name}: {err}") from None
        if dedup not in DEDUP:
            raise UserError(f"objective {self.name}: dedup must be one of {DEDUP}, got {dedup!r}")
        self.temperature, self.use_mlp, self.dedup = temperature, mlp, dedup
        self.do_mlm, self.mlm_weight = do_mlm, mlm_weight
        self.mlp: nn.Module | None = None
        self.mlm = MLMAuxiliary(mlm_probability, seed=mlm_seed) if do_mlm else None
        self._ready = False

    def setup(self, encoder: Any) -> None:
        """Build the training-only heads (they need the encoder's sizes) before the optimizer."""
        if self.use_mlp:
            self.mlp = mlp_layer(encoder)
            if encoder.pooling == "cls":
                log.warning(
                    "SimCSE MLP over pooling 'cls' stacks two dense+tanh layers; SimCSE's "
                    "setting is pooling 'cls_before_pooler' with the objective's MLP"
                )
        if getattr(encoder, "normalize", False):
            log.warning(
                "encoder normalize=True: SimCSE embeds unnormalised (cosine is taken in the loss)"
            )
        if self.mlm is not None:
            self.mlm.setup(encoder)
        self._ready = True

    def embed(self, encoder: nn.Module, features: dict[str, Tensor]) -> Tensor:
        if not self._ready:
            raise RuntimeError(
                f"{type(self).__name__}.setup(encoder) must run before training "
                "(it builds heads the optimizer must see); use build_objective"
            )
        z = encoder(features)
        return self.mlp(z) if self.mlp is not None else z

    def auxiliary(self, encoder: nn.Module, batch: Any) -> Tensor | None:
        """The MLM loss (a per-example loss, so a gradient-cache loop can run it chunk-wise)."""
        if self.mlm is None:
            return None
        return self.mlm(encoder, [t for view in self.views(batch) for t in view])

    def combine(self, parts: dict[str, Tensor], aux: Tensor | None) -> dict[str, Tensor]:
        """Contrastive parts + ``mlm_weight`` x the MLM loss (SimCSE's ``do_mlm``)."""
        return parts if aux is None else with_mlm(parts, aux, self.mlm_weight)

    def forward(self, encoder: nn.Module, batch: Any) -> dict[str, Tensor]:
        return self.combine(super().forward(encoder, batch), self.auxiliary(encoder, batch))

    def config_dict(self) -> dict[str, Any]:
        cfg = {
            "name": self.name,
            "temperature": self.temperature,
            "mlp": self.use_mlp,
            "dedup": self.dedup,
            "do_mlm": self.do_mlm,
            "mlm_weight": self.mlm_weight,
        }
        if self.mlm is not None:
            cfg.update(self.mlm.config_dict())
        return cfg


class SimCSEUnsup(_SimCSEBase):
    """Unsupervised SimCSE (Gao et al., 2021): each sentence is its own positive, the noise is
    dropout. The batch ``[x; x]`` goes through the encoder in ONE pass so the two copies get
    different dropout masks; InfoNCE at temperature 0.05 with in-batch negatives.
    """

    name = "simcse_unsup"
    batch_type = SentenceBatch

    def views(self, batch: SentenceBatch) -> list[list[str]]:
        return [batch.texts, batch.texts]

    def loss(self, embeddings: list[Tensor], batch: SentenceBatch) -> dict[str, Tensor]:
        return in_batch_loss(
            embeddings, batch.texts, batch.texts, [], dedup=self.dedup, temperature=self.temperature
        )


class SimCSESup(_SimCSEBase):
    """Supervised SimCSE (Gao et al., 2021): NLI premise -> entailment hypothesis as positive,
    contradiction hypothesis as hard negative (one negative column; 0 or more also work).
    ``hard_negative_weight`` is SimCSE's log-weight added to each row's own hard-negative logit
    (default 0: weight 1).
    """

    name = "simcse_sup"
    batch_type = PairBatch

    def __init__(self, *args: Any, hard_negative_weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hard_negative_weight = hard_negative_weight

    def views(self, batch: PairBatch) -> list[list[str]]:
        return [batch.anchors, batch.positives, *batch.negatives]

    def loss(self, embeddings: list[Tensor], batch: PairBatch) -> dict[str, Tensor]:
        return in_batch_loss(
            embeddings,
            batch.anchors,
            batch.positives,
            batch.negatives,
            dedup=self.dedup,
            temperature=self.temperature,
            hard_negative_weight=self.hard_negative_weight,
        )

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "hard_negative_weight": self.hard_negative_weight}
