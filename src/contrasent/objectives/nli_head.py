"""SBERT's NLI softmax head (Reimers & Gurevych, 2019), as ConSERT trains it.

``logits = W [u; v; |u - v|] + b`` over the 3 NLI labels, cross-entropy. The ConSERT scripts add
``--concatenation_sent_max_square``: a fourth block ``max(u, v)^2`` (elementwise), appended after
``|u - v|`` (and after ``u * v`` if that is on), the order of ``AdvCLSoftmaxLoss._reps_to_output``.
The head is a training-only module of the objective; it is never saved with the encoder.

Labels are 0 = entailment, 1 = neutral, 2 = contradiction (contrasent's ``NLIBatch``); the
reference numbers them contradiction 0, entailment 1, neutral 2, which changes nothing but the
row order of ``W``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NLI_LABELS = ("entailment", "neutral", "contradiction")


def nli_features(
    u: Tensor,
    v: Tensor,
    *,
    difference: bool = True,
    multiplication: bool = False,
    max_square: bool = False,
) -> Tensor:
    """``[u; v; |u - v|; u * v; max(u, v)^2]`` with the optional blocks switched on or off."""
    if u.shape != v.shape:
        raise ValueError(f"u {tuple(u.shape)} and v {tuple(v.shape)} differ")
    blocks = [u, v]
    if difference:
        blocks.append((u - v).abs())
    if multiplication:
        blocks.append(u * v)
    if max_square:
        blocks.append(torch.maximum(u, v).pow(2))
    return torch.cat(blocks, dim=-1)


def nli_blocks(difference: bool = True, multiplication: bool = False, max_square: bool = False):
    """How many ``dim``-sized blocks :func:`nli_features` concatenates."""
    return 2 + int(difference) + int(multiplication) + int(max_square)


class NLISoftmaxHead(nn.Module):
    """A linear classifier over :func:`nli_features`; ``loss`` is the mean cross-entropy.

    Initialised as ``nn.Linear`` (as SBERT's ``SoftmaxLoss`` and the reference are).
    """

    def __init__(
        self,
        dim: int,
        num_labels: int = 3,
        *,
        difference: bool = True,
        multiplication: bool = False,
        max_square: bool = False,
    ) -> None:
        super().__init__()
        self.options = {
            "difference": difference,
            "multiplication": multiplication,
            "max_square": max_square,
        }
        self.num_labels = num_labels
        self.classifier = nn.Linear(nli_blocks(**self.options) * dim, num_labels)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        feats = nli_features(u, v, **self.options)
        return self.classifier(feats.to(self.classifier.weight.dtype))

    def loss(self, u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
        logits = self(u, v)
        labels = labels.to(device=logits.device, dtype=torch.long)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_labels):
            bad = labels[(labels < 0) | (labels >= self.num_labels)][0].item()
            raise ValueError(f"NLI label {bad} outside 0..{self.num_labels - 1}")
        return F.cross_entropy(logits, labels)

    @staticmethod
    def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
        """Fraction of rows classified right (detached, for logging)."""
        return (logits.detach().argmax(-1) == labels.to(logits.device)).float().mean()
