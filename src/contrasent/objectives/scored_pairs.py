"""Losses on scored pairs (``ScoredPairBatch``: sentence1, sentence2, a score in [0, 1]):
``cosent`` (CoSENT), ``angle`` (AnglE) and ``cosine_mse`` (SBERT's CosineSimilarityLoss).

The math is in pure functions on similarities and labels (tested against sentence-transformers'
``CoSENTLoss``, ``AnglELoss`` and ``CosineSimilarityLoss`` on the same embeddings). CoSENT and
AnglE rank every pair of the batch against every other, so the objectives gather the two
sentence embeddings (with gradient) and the scores of every process and compute the loss of the
GLOBAL batch on each process: the per-process losses are all equal to the one-process loss, the
gather's backward hands each process ``W`` times its share of the gradient and DDP's averaging
divides by ``W`` again (see :mod:`contrasent.core.distributed`). The gradient cache runs them
unchanged (views / embed / loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from contrasent.core.distributed import all_gather_no_grad, all_gather_with_grad
from contrasent.data.batches import ScoredPairBatch
from contrasent.objectives.base import LossPart, Objective, Parts, View
from contrasent.objectives.functional import fp32

COSENT_CITATION = """@online{su2022cosent,
  title = {{CoSENT}: a more efficient sentence vector scheme than Sentence-{BERT}},
  author = {Su, Jianlin},
  year = {2022},
  url = {https://kexue.fm/archives/8847}
}"""


# ----------------------------------------------------------------------------- pure math
def cosine_pairs(u: Tensor, v: Tensor) -> Tensor:
    """``cos(u_i, v_i)`` per row: [N] (float32 or float64)."""
    return F.cosine_similarity(fp32(u), fp32(v), dim=-1)


def angle_pairs(u: Tensor, v: Tensor) -> Tensor:
    """AnglE's similarity per row: [N]. With ``x = a + ib`` (the first and second half of the
    normalised vector; an odd dimension gets a zero appended), ``|Re(x conj(y)) + Im(...)|``
    written out as ``|cos(u, v) + sum(u_b * v_a - u_a * v_b)|``, the form of the authors' code
    that sentence-transformers' ``pairwise_angle_sim`` uses."""
    u, v = fp32(u), fp32(v)
    if u.shape[-1] % 2:
        u, v = F.pad(u, (0, 1)), F.pad(v, (0, 1))
    u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    ua, ub = u.chunk(2, dim=-1)
    va, vb = v.chunk(2, dim=-1)
    return ((u * v).sum(-1) + (ub * va - ua * vb).sum(-1)).abs()


def cosent_loss(similarities: Tensor, labels: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT: ``log(1 + sum over (i, j) with label_i > label_j of exp(scale * (s_j - s_i)))``.

    similarities, labels: [N]. Ties add nothing; a batch without two distinct labels gives 0.
    The [N, N] difference matrix is fine for training batches (thousands of rows at most).
    """
    s = scale * similarities
    diff = s[None, :] - s[:, None]  # [N, N]: diff[i, j] = scale * (s_j - s_i)
    higher = labels[:, None] > labels[None, :]  # pair i must score above pair j
    terms = torch.cat([diff.new_zeros(1), diff[higher]])
    return torch.logsumexp(terms, dim=0)


def angle_ibn_loss(u: Tensor, v: Tensor, positive: Tensor, scale: float = 20.0) -> Tensor:
    """AnglE's in-batch-negative term (``in_batch_negative_loss`` of the authors' ``angle_emb``
    package, binary labels): the 2N texts of the batch (u_i, v_i interleaved) are each an anchor
    and every other text of the batch is a candidate; a text of a positive pair must find its
    partner (cross-entropy over ``scale`` * cosine), a text of a negative pair adds 0 but still
    counts in the mean over the 2N rows and is a candidate for the others.

    u, v: [N, D]; positive: [N] bool.
    """
    z = F.normalize(fp32(torch.stack([u, v], dim=1).flatten(0, 1)), dim=-1)  # [2N, D]: u0 v0 u1 ..
    logits = scale * (z @ z.T)  # [2N, 2N]
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))  # a text is not its own candidate
    partner = torch.arange(len(z), device=z.device) ^ 1  # 0<->1, 2<->3, ...
    nll = -logits.log_softmax(dim=-1).gather(1, partner[:, None]).squeeze(1)  # [2N]
    return (nll * positive.repeat_interleave(2).to(nll.dtype)).mean()


def cosine_mse_loss(similarities: Tensor, labels: Tensor) -> Tensor:
    """SBERT's CosineSimilarityLoss: ``mean((cos_i - label_i)^2)``."""
    return F.mse_loss(similarities, labels.to(similarities.dtype))


# ----------------------------------------------------------------------------- the objectives
class ScoredPairObjective(Objective):
    """Base of the objectives on ``ScoredPairBatch``: two views and the global batch."""

    batch_type = ScoredPairBatch

    def views(self, batch: ScoredPairBatch) -> list[View]:
        return [View("sentence1", batch.sentences1), View("sentence2", batch.sentences2)]

    @staticmethod
    def gathered(outputs: dict[str, Tensor], batch: ScoredPairBatch) -> tuple[Tensor, ...]:
        """``(u, v, scores)`` of the whole global batch (gradient flows back to the owners)."""
        u, v = outputs["sentence1"], outputs["sentence2"]
        scores = torch.as_tensor(batch.scores, dtype=torch.float64, device=u.device)
        u, v = all_gather_with_grad(u), all_gather_with_grad(v)
        return u, v, all_gather_no_grad(scores).to(fp32(u).dtype)


@dataclass
class CoSENTConfig:
    """Options of CoSENT.

    Attributes:
        scale: Multiplier of the cosine before the ranking softmax (CoSENT and
            sentence-transformers: 20).
    """

    scale: float = 20.0

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")


class CoSENT(ScoredPairObjective):
    """CoSENT (Su, 2022): every pair of the batch with a higher score must
    have a higher cosine than every pair with a lower one (a ranking loss over all pairs of
    pairs). Equals sentence-transformers' ``CoSENTLoss``."""

    name = "cosent"
    method = "CoSENT (scored pairs)"
    Config = CoSENTConfig
    citation = COSENT_CITATION

    def loss(self, outputs: dict[str, Tensor], batch: ScoredPairBatch) -> Parts:
        u, v, scores = self.gathered(outputs, batch)
        return {"cosent": LossPart(cosent_loss(cosine_pairs(u, v), scores, self.config.scale))}


@dataclass
class AnglEConfig:
    """Options of AnglE. The defaults are sentence-transformers' ``AnglELoss`` (the angle term
    alone); the paper trains with a weighted sum of the three terms.

    Attributes:
        scale: Multiplier of the similarities in the angle and CoSENT terms (20).
        angle_weight: Weight of the angle-difference term (CoSENT's ranking on AnglE's angle
            similarity).
        cosent_weight: Weight of the CoSENT term on the cosine.
        ibn_weight: Weight of the in-batch-negatives term (angle_emb's): each text of a pair
            scored at least ``ibn_threshold`` must find its partner among all other 2N-1 texts
            of the global batch; texts of the other pairs are candidates only.
        ibn_scale: Multiplier of the cosine logits of the in-batch term (angle_emb: 20).
        ibn_threshold: Normalised score (in [0, 1]) from which a pair is a positive for the
            in-batch term (angle_emb reads labels as 0/1; 0.5 gives the same split for them).
    """

    scale: float = 20.0
    angle_weight: float = 1.0
    cosent_weight: float = 0.0
    ibn_weight: float = 0.0
    ibn_scale: float = 20.0
    ibn_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not (self.scale > 0 and self.ibn_scale > 0):
            raise ValueError("scale and ibn_scale must be > 0")
        weights = (self.angle_weight, self.cosent_weight, self.ibn_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError("the AnglE weights must be >= 0 and at least one > 0")
        if not 0.0 <= self.ibn_threshold <= 1.0:
            raise ValueError(f"ibn_threshold must be in [0, 1], got {self.ibn_threshold}")


class AnglE(ScoredPairObjective):
    """AnglE (Li & Li, 2024): CoSENT's ranking on an angle difference in complex space (whose
    gradient does not vanish where the cosine saturates), optionally with the CoSENT and
    in-batch-negative terms of the paper. The angle term equals sentence-transformers'
    ``AnglELoss``."""

    name = "angle"
    method = "AnglE (scored pairs)"
    Config = AnglEConfig
    citation = """@inproceedings{li2024angle,
  title = {{AoE}: Angle-optimized Embeddings for Semantic Textual Similarity},
  author = {Li, Xianming and Li, Jing},
  booktitle = {Proceedings of the 62nd Annual Meeting of the Association for Computational
               Linguistics (ACL)},
  year = {2024}
}"""

    def loss(self, outputs: dict[str, Tensor], batch: ScoredPairBatch) -> Parts:
        c = self.config
        u, v, scores = self.gathered(outputs, batch)
        parts: Parts = {}
        if c.angle_weight:
            parts["angle"] = LossPart(
                cosent_loss(angle_pairs(u, v), scores, c.scale), c.angle_weight
            )
        if c.cosent_weight:
            parts["cosent"] = LossPart(
                cosent_loss(cosine_pairs(u, v), scores, c.scale), c.cosent_weight
            )
        if c.ibn_weight:
            ibn = angle_ibn_loss(u, v, scores >= c.ibn_threshold, c.ibn_scale)
            parts["ibn"] = LossPart(ibn, c.ibn_weight)
        return parts


class CosineMSE(ScoredPairObjective):
    """SBERT's regression objective (Reimers & Gurevych, 2019): the cosine of each pair
    regressed onto its score in [0, 1] by mean squared error. Equals sentence-transformers'
    ``CosineSimilarityLoss``."""

    name = "cosine_mse"
    method = "cosine-similarity regression (SBERT)"
    citation = """@inproceedings{reimers2019sbert,
  title = {Sentence-{BERT}: Sentence Embeddings using Siamese {BERT}-Networks},
  author = {Reimers, Nils and Gurevych, Iryna},
  booktitle = {Empirical Methods in Natural Language Processing (EMNLP)},
  year = {2019}
}"""

    def loss(self, outputs: dict[str, Tensor], batch: Any) -> Parts:
        u, v, scores = self.gathered(outputs, batch)
        return {"mse": LossPart(cosine_mse_loss(cosine_pairs(u, v), scores))}
