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
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from contrasent.data.batches import PairBatch, SentenceBatch, row_keys
from contrasent.objectives.base import Objective, Parts, View
from contrasent.objectives.functional import logit_scale
from contrasent.objectives.inbatch import DEDUP, in_batch_parts
from contrasent.objectives.mlm import MLMAuxiliary

log = logging.getLogger(__name__)


def mlp_layer(encoder: Any) -> nn.Module:
    """SimCSE's ``MLPLayer`` (dense + tanh, hidden -> hidden), BERT-initialised like ``init_weights``."""
    h = encoder.hidden_size
    mlp = nn.Sequential(nn.Linear(h, h), nn.Tanh())
    nn.init.normal_(mlp[0].weight, std=getattr(encoder.model.config, "initializer_range", 0.02))
    nn.init.zeros_(mlp[0].bias)
    return mlp.to(device=encoder.device, dtype=encoder.model.dtype)


@dataclass
class SimCSEUnsupConfig:
    """Options of unsupervised SimCSE.

    Attributes:
        temperature: Softmax temperature of the cosine logits (SimCSE: 0.05).
        mlp: Put SimCSE's training-only MLP (dense + tanh) over the pooled output; never saved.
        dedup: "mask": in-batch columns whose text equals the row's are not negatives; "none".
        do_mlm: Add SimCSE's masked-LM auxiliary loss (``--do_mlm``) on the batch's texts.
        mlm_weight: Weight of the MLM loss (SimCSE's ``--mlm_weight``, 0.1).
        mlm_probability: Fraction of tokens selected for masking (BERT's 80/10/10 rule).
        mlm_seed: Seed of the MLM masks (each row's mask is keyed by this and its place in the run).
    """

    temperature: float = 0.05
    mlp: bool = True
    dedup: Literal["mask", "none"] = "none"
    do_mlm: bool = False
    mlm_weight: float = 0.1
    mlm_probability: float = 0.15
    mlm_seed: int = 0

    def __post_init__(self) -> None:
        logit_scale(temperature=self.temperature)  # ValueError: must be > 0
        if self.dedup not in DEDUP:
            raise ValueError(f"dedup must be one of {DEDUP}, got {self.dedup!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mlm_weight < 0:
            raise ValueError(f"mlm_weight must be >= 0, got {self.mlm_weight}")


@dataclass
class SimCSESupConfig(SimCSEUnsupConfig):
    """Options of supervised SimCSE.

    Attributes:
        hard_negative_weight: SimCSE's log-weight added to each row's own hard-negative logit
            (0: weight 1).
    """

    hard_negative_weight: float = 0.0


class _SimCSEBase(Objective):
    """Temperature, the training-only MLP, optional dedup masking and the MLM auxiliary."""

    citation = """@inproceedings{gao2021simcse,
  title = {{SimCSE}: Simple Contrastive Learning of Sentence Embeddings},
  author = {Gao, Tianyu and Yao, Xingcheng and Chen, Danqi},
  booktitle = {Empirical Methods in Natural Language Processing (EMNLP)},
  year = {2021}
}"""

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        c = self.config
        self.mlp: nn.Module | None = None
        self.mlm = MLMAuxiliary(c.mlm_probability, seed=c.mlm_seed) if c.do_mlm else None
        self._ready = False

    def setup(self, encoder: Any) -> None:
        """Build the training-only heads (they need the encoder's sizes) before the optimizer."""
        if self.config.mlp:
            self.mlp = mlp_layer(encoder)
            if encoder.pooling == "cls":
                log.warning(
                    "SimCSE MLP over pooling 'cls' stacks two dense+tanh layers; SimCSE's "
                    "setting is pooling 'cls_before_pooler' with the objective's MLP"
                )
        if getattr(encoder, "normalize", False):
            log.debug("encoder normalize=True: the loss takes cosines, the saved model normalises")
        if self.mlm is not None:
            self.mlm.setup(encoder)
        self._ready = True

    def text_views(self, batch: Any) -> list[View]:
        raise NotImplementedError

    def views(self, batch: Any) -> list[View]:
        views = self.text_views(batch)
        if self.mlm is not None:  # SimCSE masks every sentence of the batch, each copy apart
            texts = [t for v in views for t in v.texts]
            keys = [k for i, v in enumerate(views) for k in row_keys(batch, salt=i)]
            views.append(self.mlm.view(texts, keys))
        return views

    def embed(self, encoder: Any, view: View, features: dict[str, Tensor]) -> Tensor:
        if not self._ready:
            raise RuntimeError(
                f"{type(self).__name__}.setup(encoder) must run before training "
                "(it builds heads the optimizer must see); use build_objective"
            )
        if view.mode == MLMAuxiliary.MODE:
            return self.mlm.row_losses(encoder, view, features)
        z = encoder(features, augment=view.augment)
        return self.mlp(z) if self.mlp is not None else z

    def with_mlm(self, parts: Parts, outputs: dict[str, Tensor]) -> Parts:
        if self.mlm is not None:
            parts["mlm"] = self.mlm.part(outputs["mlm"], self.config.mlm_weight)
        return parts


class SimCSEUnsup(_SimCSEBase):
    """Unsupervised SimCSE (Gao et al., 2021): each sentence is its own positive, the noise is
    dropout. The batch ``[x; x]`` goes through the encoder in ONE pass so the two copies get
    different dropout masks; InfoNCE at temperature 0.05 with in-batch negatives.
    """

    name = "simcse_unsup"
    method = "SimCSE (unsupervised)"
    Config = SimCSEUnsupConfig
    batch_type = SentenceBatch

    def text_views(self, batch: SentenceBatch) -> list[View]:
        return [View("anchor", batch.texts), View("positive", batch.texts)]

    def loss(self, outputs: dict[str, Tensor], batch: SentenceBatch) -> Parts:
        parts = in_batch_parts(
            [outputs["anchor"], outputs["positive"]],
            batch.texts,
            batch.texts,
            [],
            dedup=self.config.dedup,
            temperature=self.config.temperature,
        )
        return self.with_mlm(parts, outputs)


class SimCSESup(_SimCSEBase):
    """Supervised SimCSE (Gao et al., 2021): NLI premise -> entailment hypothesis as positive,
    contradiction hypothesis as hard negative (one negative column; 0 or more also work).
    ``hard_negative_weight`` is SimCSE's log-weight added to each row's own hard-negative logit
    (default 0: weight 1).
    """

    name = "simcse_sup"
    method = "SimCSE (supervised)"
    Config = SimCSESupConfig
    batch_type = PairBatch

    def text_views(self, batch: PairBatch) -> list[View]:
        negatives = [View(f"negative_{k}", col) for k, col in enumerate(batch.negatives)]
        return [View("anchor", batch.anchors), View("positive", batch.positives), *negatives]

    def loss(self, outputs: dict[str, Tensor], batch: PairBatch) -> Parts:
        k = len(batch.negatives)
        parts = in_batch_parts(
            [outputs["anchor"], outputs["positive"], *(outputs[f"negative_{i}"] for i in range(k))],
            batch.anchors,
            batch.positives,
            batch.negatives,
            dedup=self.config.dedup,
            temperature=self.config.temperature,
            hard_negative_weight=self.config.hard_negative_weight,
        )
        return self.with_mlm(parts, outputs)
