"""Losses on 0/1 pairs (duplicate flags; ``scored_pairs`` with ``score_min 0, score_max 1``):
``contrastive`` (Hadsell et al., 2006, as SBERT trains it) and ``online_contrastive`` (its
hard-pair variant, sentence-transformers' ``OnlineContrastiveLoss``).

Distances are cosine distances ``1 - cos``. Both objectives compute the loss of the GLOBAL batch
on every process (the online variant picks its hard pairs from the whole batch), as the
scored-pair objectives do (:mod:`contrasent.objectives.scored_pairs`), so several processes and
the gradient cache give the one-process loss and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from contrasent.core.errors import UserError
from contrasent.objectives.base import LossPart, Parts
from contrasent.objectives.scored_pairs import ScoredPairObjective, cosine_pairs

CITATION = """@inproceedings{hadsell2006dimensionality,
  title = {Dimensionality Reduction by Learning an Invariant Mapping},
  author = {Hadsell, Raia and Chopra, Sumit and LeCun, Yann},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2006}
}"""


def contrastive_loss(distances: Tensor, labels: Tensor, margin: float = 0.5) -> Tensor:
    """``mean(0.5 * (y d^2 + (1 - y) relu(margin - d)^2))`` over pairs: [N] -> scalar. A label
    between 0 and 1 weighs the two terms (as sentence-transformers does)."""
    y = labels.to(distances.dtype)
    return (0.5 * (y * distances.pow(2) + (1 - y) * F.relu(margin - distances).pow(2))).mean()


def online_contrastive_loss(distances: Tensor, labels: Tensor, margin: float = 0.5) -> Tensor:
    """The SUM over the batch's hard pairs only: positives farther than the closest negative
    (``d^2``) and negatives closer than the farthest positive (``relu(margin - d)^2``). Without
    negatives (positives) the threshold is the mean distance of the other class."""
    pos, neg = distances[labels == 1], distances[labels == 0]
    neg_cut = pos.max() if len(pos) else neg.mean()
    pos_cut = neg.min() if len(neg) else pos.mean()
    hard_pos, hard_neg = pos[pos > pos_cut], neg[neg < neg_cut]
    return hard_pos.pow(2).sum() + F.relu(margin - hard_neg).pow(2).sum()


def binary(scores: Tensor, name: str) -> Tensor:
    """The scores as 0/1 labels; a UserError when one is neither (the pair would be ignored)."""
    bad = scores[(scores != 0) & (scores != 1)]
    if bad.numel():
        raise UserError(
            f"objective {name} needs 0/1 labels (data.options score_min/score_max map the "
            f"file's two values onto 0 and 1), got a normalised score {bad[0].item():g}",
            "objective.name",
        )
    return scores


@dataclass
class ContrastiveConfig:
    """Options of the (online) contrastive loss.

    Attributes:
        margin: Cosine distance (1 - cos) a negative pair must at least have (SBERT: 0.5).
    """

    margin: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.margin <= 2.0:
            raise ValueError(f"margin must be in (0, 2] (a cosine distance), got {self.margin}")


class Contrastive(ScoredPairObjective):
    """Contrastive loss (Hadsell et al., 2006) on 0/1 pairs with the cosine distance: positives
    pulled together, negatives pushed beyond ``margin``. Equals sentence-transformers'
    ``ContrastiveLoss``."""

    name = "contrastive"
    method = "contrastive loss (0/1 pairs)"
    Config = ContrastiveConfig
    citation = CITATION

    def loss(self, outputs: dict[str, Tensor], batch) -> Parts:
        u, v, scores = self.gathered(outputs, batch)
        distances = 1 - cosine_pairs(u, v)
        return {"contrastive": LossPart(contrastive_loss(distances, scores, self.config.margin))}


class OnlineContrastive(ScoredPairObjective):
    """Online contrastive loss: the contrastive loss on the batch's hard positives (farther than
    the closest negative) and hard negatives (closer than the farthest positive) only, summed.
    Equals sentence-transformers' ``OnlineContrastiveLoss``."""

    name = "online_contrastive"
    method = "online contrastive loss (0/1 pairs, hard pairs)"
    Config = ContrastiveConfig
    citation = CITATION

    def loss(self, outputs: dict[str, Tensor], batch) -> Parts:
        u, v, scores = self.gathered(outputs, batch)
        labels = binary(scores, self.name)
        distances = 1 - cosine_pairs(u, v)
        loss = online_contrastive_loss(distances, labels, self.config.margin)
        return {"contrastive": LossPart(loss)}
