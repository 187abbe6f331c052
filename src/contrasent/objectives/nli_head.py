"""SBERT's NLI softmax head (Reimers & Gurevych, 2019) and the ``nli_softmax`` objective.

``logits = W [u; v; |u - v|] + b`` over the 3 NLI labels, cross-entropy (mean over the batch).
The ConSERT scripts add ``--concatenation_sent_max_square``: a fourth block ``max(u, v)^2``
(elementwise), appended after ``|u - v|`` (and after ``u * v`` if that is on), the order of
``AdvCLSoftmaxLoss._reps_to_output``. The head is a training-only module of the objective; it
is never saved with the encoder.

``nli_softmax`` is SBERT-NLI, the ConSERT paper's supervised baseline and the first stage of its
``sup-unsup`` schedule; its loss equals sentence-transformers' ``SoftmaxLoss`` (tested).

Labels are 0 = entailment, 1 = neutral, 2 = contradiction (contrasent's ``NLIBatch``); the
reference numbers them contradiction 0, entailment 1, neutral 2, which changes nothing but the
row order of ``W``. A label outside the three is refused when the data is read (``nli_pairs``
names the file and line) and again by the batch and the head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrasent.data.batches import NLI_LABELS, NLIBatch
from contrasent.objectives.base import LossPart, Objective, Parts, View
from contrasent.objectives.functional import fp32

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@contextmanager
def dropout_off(module: nn.Module, off: bool = True) -> Iterator[None]:
    """Every dropout module of ``module`` at ``p = 0`` inside the block, restored after.

    What ConSERT's ``--no_dropout`` does (it loads the model with ``hidden_dropout_prob`` and
    ``attention_probs_dropout_prob`` 0): transformers' BERT-family layers read the rate from their
    ``nn.Dropout`` modules at call time (attention: ``self.dropout.p``), so this switches off the
    embedding, attention and hidden dropout while the model's config, and hence the saved
    ``config.json``, keeps the original rates. Models that keep a rate as a plain float attribute
    are not covered.
    """
    drops = [m for m in module.modules() if isinstance(m, _DROPOUTS) and m.p > 0] if off else []
    rates = [m.p for m in drops]
    for m in drops:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(drops, rates, strict=True):
            m.p = p


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
        num_labels: int = len(NLI_LABELS),
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
        return self.loss_and_logits(u, v, labels)[0]

    def loss_and_logits(self, u: Tensor, v: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self(u, v)
        labels = torch.as_tensor(labels, device=logits.device, dtype=torch.long)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_labels):
            bad = labels[(labels < 0) | (labels >= self.num_labels)][0].item()
            raise ValueError(f"NLI label {bad} outside 0..{self.num_labels - 1}")
        return F.cross_entropy(fp32(logits), labels), logits

    @staticmethod
    def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
        """Fraction of rows classified right (detached, for logging)."""
        labels = torch.as_tensor(labels, device=logits.device)
        return (logits.detach().argmax(-1) == labels).float().mean()


@dataclass
class NLISoftmaxConfig:
    """Options of the SBERT NLI classifier.

    Attributes:
        difference: Include ``|u - v|`` in the classifier's features (SBERT: on).
        multiplication: Include ``u * v`` (SBERT: off).
        max_square: Include ``max(u, v)^2`` (ConSERT's ``--concatenation_sent_max_square``: on
            in its supervised scripts; SBERT: off).
        encoder_dropout: Keep the encoder's own dropout during training (SBERT and every
            ConSERT script with a supervised stage train with it on). Off sets every dropout
            module to 0 while training; the saved config keeps the original rates.
    """

    difference: bool = True
    multiplication: bool = False
    max_square: bool = False
    encoder_dropout: bool = True


class WithNLIHead(Objective):
    """Base of the objectives that train SBERT's NLI head on ``NLIBatch`` pairs: the head built
    in ``setup``, the encoder's dropout switch, and the cross-entropy part."""

    batch_type = NLIBatch
    matryoshka = False  # the head's input is (u, v, |u - v|) at the full width

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.head: NLISoftmaxHead | None = None

    def setup(self, encoder: Any) -> None:
        c = self.config
        head = NLISoftmaxHead(
            encoder.hidden_size,
            difference=c.difference,
            multiplication=c.multiplication,
            max_square=c.max_square,
        )
        self.head = head.to(device=encoder.device, dtype=encoder.model.dtype)

    def embed(self, encoder: Any, view: View, features: dict[str, Tensor]) -> Tensor:
        if self.head is None:
            raise RuntimeError(
                f"{type(self).__name__}.setup(encoder) must run before training (it builds the "
                "NLI head the optimizer must see); use build_objective"
            )
        with dropout_off(encoder.model, not self.config.encoder_dropout):
            return encoder(features, augment=view.augment)

    def classifier_parts(self, u: Tensor, v: Tensor, batch: NLIBatch) -> Parts:
        """``{"ce": LossPart, "nli_accuracy": detached}`` of the head on ``(u, v)``."""
        ce, logits = self.head.loss_and_logits(u, v, batch.labels)
        return {"ce": LossPart(ce), "nli_accuracy": self.head.accuracy(logits, batch.labels)}


class NLISoftmax(WithNLIHead):
    """SBERT-NLI (Reimers & Gurevych, 2019): a softmax classifier over ``[u; v; |u - v|]`` of
    the premise and hypothesis embeddings, cross-entropy over entailment/neutral/contradiction.
    ConSERT's supervised baseline and the first stage of its sup-unsup schedule."""

    name = "nli_softmax"
    method = "NLI classification (SBERT softmax)"
    Config = NLISoftmaxConfig

    def views(self, batch: NLIBatch) -> list[View]:
        return [View("premise", batch.premises), View("hypothesis", batch.hypotheses)]

    def loss(self, outputs: dict[str, Tensor], batch: NLIBatch) -> Parts:
        return self.classifier_parts(outputs["premise"], outputs["hypothesis"], batch)
