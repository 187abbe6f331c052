"""ConSERT (Yan, Li, Wang, Zhang, Wu & Xu, 2021. "ConSERT: A Contrastive Framework for
Self-Supervised Sentence Representation Transfer", ACL 2021, arXiv:2105.11741).

Two views of each sentence are made at the embedding layer (token shuffle, token / feature / span
cutoff, dropout, or none: :mod:`contrasent.augment.embedding`), and NT-Xent over the ``2N`` views
(temperature 0.1) pulls the two views of a sentence together. Three objectives:

* ``consert``: the unsupervised loss on unlabeled sentences (SentenceBatch);
* ``consert_joint``: SBERT's NLI classifier plus ``alpha`` x the contrastive loss on the same NLI
  batch (the paper's "joint"). As the reference, premises and hypotheses are two separate NT-Xent
  problems (a premise is never a hypothesis's negative), and the classifier's plain forwards are
  view 1 when ``view1`` is ``none``;
* ``consert_joint_adv``: the same with the adversarial view (FGV: noise along the gradient of the
  classifier loss w.r.t. the embedding output). Its step needs that gradient inside the step, so
  it overrides ``forward`` and cannot run under the gradient cache.

The schedules ``sup-unsup`` and ``joint-unsup`` are two-stage recipes (``nli_softmax`` or
``consert_joint``, then ``consert``): ``configs/consert-*.yaml``.

Loss scale. The reference's NT-Xent returns the SUM of its two directions' means, i.e. 2x the
mean over 2N rows that :func:`~contrasent.objectives.inbatch.gathered_nt_xent` returns, and its
scripts multiply it by ``cl_rate = 0.15``. Under AdamW the scale hardly matters but gradient
clipping (norm 1) does, so the recipes set ``weight: 0.3`` (unsup) and ``alpha: 0.3`` (joint) to
reproduce the reference's effective loss; the defaults are the paper's formulas (weight 1,
alpha 0.15).

Encoder dropout. The paper removes BERT's dropout during ConSERT training; ``encoder_dropout:
false`` sets every dropout module to 0 inside ``embed`` (the saved config keeps its rates). Only
the reference's unsup-base script does it: its supervised and two-stage scripts train with it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from contrasent.augment.embedding import (
    AdversarialPerturbation,
    CaptureEmbeddings,
    check_views,
    parse_view,
    view_name,
)
from contrasent.core.errors import UserError
from contrasent.data.batches import NLIBatch, SentenceBatch
from contrasent.objectives.base import LossPart, Objective, Parts, View, loss_record
from contrasent.objectives.functional import logit_scale
from contrasent.objectives.inbatch import gathered_nt_xent
from contrasent.objectives.nli_head import NLISoftmaxConfig, WithNLIHead, dropout_off


def view_pair(config: Any, supervised: bool, label: str) -> tuple[Any, Any]:
    """The two augmentations named by ``config.view1/view1_rate/view2/view2_rate`` (None for
    ``none``: a plain forward that may share its pass); ValueError with the user's message."""
    out = []
    try:
        for i in (1, 2):
            where = f"view{i}"
            name = view_name(getattr(config, where), where)
            rate = getattr(config, f"{where}_rate")
            if name == "adversarial":
                check_views([AdversarialPerturbation(1.0)], supervised, where)
                raise UserError(
                    f"{where}: 'adversarial' needs the supervised loss's gradient inside the "
                    f"step: use objective consert_joint_adv instead of {label}"
                )
            spec = {"name": name} if rate is None else {"name": name, "rate": rate}
            augment = parse_view(spec, where)
            out.append(None if augment.name == "none" else augment)
    except UserError as err:  # -> build_options turns it into "objective NAME: ..."
        raise ValueError(str(err)) from None
    return out[0], out[1]


def _check_common(config: Any) -> None:
    logit_scale(temperature=config.temperature)  # ValueError: must be > 0


@dataclass
class ConSERTConfig:
    """Options of unsupervised ConSERT.

    Attributes:
        view1: First view: none, shuffle, token_cutoff, feature_cutoff, span_cutoff or dropout
            (the reference's unsup-base script: feature_cutoff 0.2 + shuffle, the paper's best
            pair in its ablation).
        view1_rate: Rate of view 1 (cutoff/dropout); None: the view's default (token_cutoff
            0.15, feature_cutoff 0.2, dropout 0.2, the paper's); span_cutoff needs one.
        view2: Second view (same names).
        view2_rate: Rate of view 2.
        temperature: NT-Xent temperature (paper: 0.1).
        weight: Weight of the NT-Xent mean over the 2N views; 0.3 reproduces the reference's
            effective loss (its cl_rate 0.15 x a sum of two means).
        encoder_dropout: Keep the encoder's own dropout (paper and unsup-base script: off).
    """

    view1: str = "feature_cutoff"
    view1_rate: float | None = None
    view2: str = "shuffle"
    view2_rate: float | None = None
    temperature: float = 0.1
    weight: float = 1.0
    encoder_dropout: bool = False

    def __post_init__(self) -> None:
        _check_common(self)
        view_pair(self, supervised=False, label="consert")
        if self.weight <= 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")


class ConSERT(Objective):
    """Unsupervised ConSERT (Yan et al., 2021): two embedding-level views of each sentence,
    NT-Xent over the 2N views at temperature 0.1, the encoder's dropout off."""

    name = "consert"
    method = "ConSERT (unsupervised)"
    Config = ConSERTConfig
    batch_type = SentenceBatch

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.augments = view_pair(self.config, supervised=False, label=self.name)

    def views(self, batch: SentenceBatch) -> list[View]:
        a1, a2 = self.augments
        return [View("view1", batch.texts, augment=a1), View("view2", batch.texts, augment=a2)]

    def embed(self, encoder: Any, view: View, features: dict[str, Tensor]) -> Tensor:
        with dropout_off(encoder.model, not self.config.encoder_dropout):
            return encoder(features, augment=view.augment)

    def loss(self, outputs: dict[str, Tensor], batch: SentenceBatch) -> Parts:
        loss, accuracy = gathered_nt_xent(
            outputs["view1"], outputs["view2"], temperature=self.config.temperature
        )
        return {"contrastive": LossPart(loss, self.config.weight), "accuracy": accuracy}


@dataclass
class ConSERTJointConfig(NLISoftmaxConfig):
    """Options of ConSERT's joint objective (NLI classifier + alpha x contrastive).

    Attributes:
        view1: First view of the contrastive loss; none: the classifier's own forwards (the
            reference: 4 encoder passes per batch).
        view1_rate: Rate of view 1.
        view2: Second view (the joint script: token_cutoff 0.1).
        view2_rate: Rate of view 2.
        temperature: NT-Xent temperature (0.1).
        alpha: Weight of each of the two NT-Xent means (premises, hypotheses); the paper's
            0.15; 0.3 reproduces the reference scripts' effective loss.
        encoder_dropout: Keep the encoder's own dropout (paper: off; the joint script: on).
    """

    view1: str = "none"
    view1_rate: float | None = None
    view2: str = "token_cutoff"
    view2_rate: float | None = 0.1
    temperature: float = 0.1
    alpha: float = 0.15
    encoder_dropout: bool = False

    def __post_init__(self) -> None:
        _check_common(self)
        view_pair(self, supervised=True, label="consert_joint")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")


class _JointParts(WithNLIHead):
    """The joint loss from the four outputs: CE on the plain pair + alpha x two NT-Xents."""

    def joint_parts(
        self, batch: NLIBatch, plain: tuple[Tensor, Tensor], first: tuple, second: tuple
    ) -> Parts:
        c = self.config
        parts = self.classifier_parts(*plain, batch)
        accuracy = []
        for side, a, b in (("premise", first[0], second[0]), ("hypothesis", first[1], second[1])):
            loss, acc = gathered_nt_xent(a, b, temperature=c.temperature)
            parts[f"contrastive_{side}"] = LossPart(loss, c.alpha)
            accuracy.append(acc)
        parts["accuracy"] = torch.stack(accuracy).mean()
        return parts


class ConSERTJoint(_JointParts):
    """ConSERT joint (Yan et al., 2021): SBERT's NLI softmax loss plus alpha x NT-Xent between
    two embedding-level views, on the premises and on the hypotheses of the same NLI batch."""

    name = "consert_joint"
    method = "ConSERT (joint NLI + contrastive)"
    Config = ConSERTJointConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.augments = view_pair(self.config, supervised=True, label=self.name)

    def views(self, batch: NLIBatch) -> list[View]:
        a1, a2 = self.augments
        views = [View("premise", batch.premises), View("hypothesis", batch.hypotheses)]
        if a1 is not None:
            views += [View("premise_1", batch.premises, a1), View("hypothesis_1", batch.hypotheses, a1)]  # fmt: skip
        return views + [
            View("premise_2", batch.premises, a2),
            View("hypothesis_2", batch.hypotheses, a2),
        ]

    def loss(self, outputs: dict[str, Tensor], batch: NLIBatch) -> Parts:
        plain = (outputs["premise"], outputs["hypothesis"])
        first = (outputs["premise_1"], outputs["hypothesis_1"]) if "premise_1" in outputs else plain
        second = (outputs["premise_2"], outputs["hypothesis_2"])
        return self.joint_parts(batch, plain, first, second)


@dataclass
class ConSERTJointAdvConfig(NLISoftmaxConfig):
    """Options of ConSERT joint with the adversarial view (view 1 = the plain forward).

    Attributes:
        epsilon: L2 norm of each token's FGV noise (the reference: 0.01 for the contrastive
            adversarial view; 1.0 is its --noise_norm for adversarial training).
        temperature: NT-Xent temperature (0.1).
        alpha: Weight of each of the two NT-Xent means (premises, hypotheses).
        encoder_dropout: Keep the encoder's own dropout (paper: off).
    """

    epsilon: float = 0.01
    temperature: float = 0.1
    alpha: float = 0.15
    encoder_dropout: bool = False

    def __post_init__(self) -> None:
        _check_common(self)
        try:
            parse_view({"name": "adversarial", "epsilon": self.epsilon}, "epsilon")
        except UserError as err:
            raise ValueError(str(err)) from None


class ConSERTJointAdv(_JointParts):
    """ConSERT joint with the adversarial view (Yan et al., 2021; FGV, Miyato et al., 2017): the
    second view adds ``epsilon * g / ||g||`` per token to the embedding output, ``g`` the gradient
    of the NLI loss there. Cannot run under the gradient cache (its view needs that gradient)."""

    name = "consert_joint_adv"
    method = "ConSERT (joint, adversarial views)"
    Config = ConSERTJointAdvConfig
    supports_gradient_cache = False
    gradient_cache_hint = "its adversarial view needs the supervised loss's gradient in the step"

    def views(self, batch: NLIBatch) -> list[View]:
        return [View("premise", batch.premises), View("hypothesis", batch.hypotheses)]

    def forward(self, encoder: Any, batch: NLIBatch, max_length: int | None = None) -> dict:
        """Plain forwards -> L_ce -> its gradient w.r.t. both embedding outputs -> the
        adversarial forwards (``captured output + noise``, as the reference: the same dropout
        mask as the plain pass when dropout is on) -> the joint parts."""
        feats = [encoder.tokenize(t, max_length) for t in (batch.premises, batch.hypotheses)]
        with dropout_off(encoder.model, not self.config.encoder_dropout):
            captures = [CaptureEmbeddings(), CaptureEmbeddings()]
            plain = tuple(encoder(f, augment=c) for f, c in zip(feats, captures, strict=True))
            ce, _ = self.head.loss_and_logits(*plain, batch.labels)
            grads = torch.autograd.grad(ce, [c.output for c in captures], retain_graph=True)
            base = AdversarialPerturbation(self.config.epsilon)
            adversarial = tuple(
                encoder(f, augment=base.with_grad(g, f["attention_mask"], base=c.output))
                for f, g, c in zip(feats, grads, captures, strict=True)
            )
        return loss_record(self.joint_parts(batch, plain, plain, adversarial))
