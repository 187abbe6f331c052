"""DeCLUTR (Giorgi, Nitski, Wang & Bader, 2021. "DeCLUTR: Deep Contrastive Learning for
Unsupervised Textual Representations", ACL 2021, arXiv:2006.03659).

Spans sampled from the same document are positives (the ``documents`` data kind samples them:
:mod:`contrasent.data.kinds.documents`). Mapping of the reference (``declutr/model.py``,
``declutr/losses/pytorch_metric_learning.py``, ``training_config/declutr*.jsonnet``) to ours:

* Views: the anchors ``[D * A]`` and the positives ``[D * A * P]`` of the batch's ``D``
  documents, pooled by the encoder (the recipes: ``mean``, the reference's
  ``BagOfEmbeddingsEncoder(averaged=True)`` over every non-pad token, specials included). Each
  anchor's ``P`` positive embeddings are averaged (:func:`mean_positives`; the reference averages
  the pooled vectors before any normalisation: keep ``model.normalize: false`` for that).
* Loss: NT-Xent (``gathered_nt_xent``, the shared one) over the pairs (anchor, mean positive),
  temperature 0.05: each of the ``2N`` vectors of the gathered batch has its partner as positive
  and the ``2N - 2`` others (the other anchors of its own document included) as negatives; mean
  over the ``2N`` rows, as pytorch-metric-learning's ``NTXentLoss`` with its ``MeanReducer``
  (tested equal). Across processes the gradient equals one process's: the reference's per-replica
  full loss gave ``1/N`` of it on N GPUs (its ``scale_fix`` flag, off in the paper configs).
* MLM (``mlm: true``, weight 1, probability 0.15): the reference masks the ANCHORS and takes both
  the MLM loss and the anchor embeddings of the contrastive loss from that one forward pass of the
  masked anchors (``mlm_pass: anchors``, our default: view mode ``masked_anchors``, whose row-wise
  output is ``[embedding, MLM loss sum, masked-token count]``, ``[rows, H + 2]``; the loss splits
  it). ``mlm_pass: separate`` embeds clean anchors and runs the MLM loss on its own masked pass
  (``MLMAuxiliary``'s view; one more forward). Either way the MLM loss is the mean over the masked
  tokens of the GLOBAL batch (the reference: each GPU's local mean, averaged) and masks are keyed
  per anchor (``SpanBatch.anchor_keys``), so the gradient cache and any number of processes give
  the same loss. The LM head is the checkpoint's pretrained one when it has one (RoBERTa), else a
  fresh one (MiniLM); it is training-only, never saved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from contrasent.core.errors import UserError
from contrasent.data.span_batch import SpanBatch
from contrasent.objectives.base import LossPart, Objective, Parts, View
from contrasent.objectives.functional import fp32, logit_scale
from contrasent.objectives.inbatch import gathered_nt_xent
from contrasent.objectives.mlm import MLMAuxiliary

log = logging.getLogger(__name__)

MASKED_ANCHORS = "masked_anchors"  # view mode: embedding + MLM sums of the masked anchors


def mean_positives(positives: Tensor, num_positives: int) -> Tensor:
    """``[R * P, H]`` positive embeddings (anchor-major) -> ``[R, H]``, the mean per anchor."""
    if num_positives < 1 or positives.shape[0] % num_positives:
        raise ValueError(
            f"{positives.shape[0]} positive rows is not a multiple of num_positives {num_positives}"
        )
    return positives.reshape(-1, num_positives, positives.shape[-1]).mean(dim=1)


@dataclass
class DeCLUTRConfig:
    """Options of DeCLUTR.

    Attributes:
        temperature: NT-Xent temperature (reference: 0.05).
        mlm: Add the masked-LM loss on the anchors (reference: on).
        mlm_weight: Weight of the MLM loss (reference: 1, the plain sum of the two losses).
        mlm_probability: Fraction of anchor tokens selected for masking (BERT's 80/10/10 rule).
        mlm_seed: Seed of the MLM masks (each anchor's mask is keyed by this and its place).
        mlm_pass: anchors: the reference's single pass, whose masked anchors give both the MLM
            loss and the anchor embeddings; separate: clean anchor embeddings plus an MLM pass
            of their own (one more forward per step).
    """

    temperature: float = 0.05
    mlm: bool = True
    mlm_weight: float = 1.0
    mlm_probability: float = 0.15
    mlm_seed: int = 0
    mlm_pass: Literal["anchors", "separate"] = "anchors"

    def __post_init__(self) -> None:
        logit_scale(temperature=self.temperature)  # ValueError: must be > 0
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mlm_weight < 0:
            raise ValueError(f"mlm_weight must be >= 0, got {self.mlm_weight}")
        if self.mlm_pass not in ("anchors", "separate"):
            raise ValueError(f"mlm_pass must be 'anchors' or 'separate', got {self.mlm_pass!r}")


class DeCLUTR(Objective):
    """DeCLUTR (Giorgi et al., 2021): spans of one document are positives; NT-Xent over anchors
    and their averaged positives, plus MLM on the anchors (data.kind documents)."""

    name = "declutr"
    method = "DeCLUTR (contrastive spans)"
    Config = DeCLUTRConfig
    batch_type = SpanBatch

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        c = self.config
        self.mlm = MLMAuxiliary(c.mlm_probability, seed=c.mlm_seed) if c.mlm else None
        self.max_length: int | None = None
        self.specials = 0

    @property
    def in_pass(self) -> bool:
        """Whether the MLM loss comes from the anchor pass itself (the reference)."""
        return self.mlm is not None and self.config.mlm_pass == "anchors"

    def setup(self, encoder: Any) -> None:
        if self.mlm is not None:
            self.mlm.setup(encoder)
        if getattr(encoder, "normalize", False):
            log.info("encoder normalize=True: positives are averaged as unit vectors")
        self.max_length = encoder.max_seq_length
        self.specials = encoder.tokenizer.num_special_tokens_to_add(pair=False)

    def views(self, batch: SpanBatch) -> list[View]:
        self._check_span_fit(batch)
        keys = batch.anchor_keys()
        anchors = View("anchors", batch.anchor_texts, keys=keys)
        if self.in_pass:
            anchors.mode = MASKED_ANCHORS
        views = [anchors, View("positives", batch.positive_texts)]
        if self.mlm is not None and not self.in_pass:
            views.append(self.mlm.view(batch.anchor_texts, keys))
        return views

    def _check_span_fit(self, batch: SpanBatch) -> None:
        # The data kind checked data.max_seq_length; the encoder's own limit is known here.
        span, limit = batch.max_span_len, self.max_length
        if span is not None and limit is not None and span + self.specials > limit:
            raise UserError(
                f"declutr: max_span_len ({span}) plus {self.specials} special tokens exceeds the "
                f"encoder's max_seq_length {limit}; use max_span_len <= {limit - self.specials} "
                "or raise model.max_seq_length"
            )

    def embed(self, encoder: Any, view: View, features: dict[str, Tensor]) -> Tensor:
        if view.mode == MLMAuxiliary.MODE:
            return self._mlm().row_losses(encoder, view, features)
        if view.mode == MASKED_ANCHORS:
            return self._masked_anchors(encoder, view, features)
        return encoder(features, augment=view.augment)

    def embedding_width(self, view: View, output: Tensor) -> int | None:
        if view.mode == MASKED_ANCHORS:
            return output.shape[-1] - 2  # the embedding, then the MLM sums and counts
        return super().embedding_width(view, output)

    def _mlm(self) -> MLMAuxiliary:
        if self.mlm is None or self.mlm.head is None:
            raise RuntimeError("DeCLUTR.setup(encoder) must run before training (MLM head)")
        return self.mlm

    def _masked_anchors(self, encoder: Any, view: View, features: dict[str, Tensor]) -> Tensor:
        """``[rows, H + 2]``: the pooled embedding of the masked anchors and, from the same
        forward, their MLM loss sums and masked-token counts. Always ONE pass over all rows
        (``train.length_buckets`` does not split it, as it splits no MLM pass): the hook keeps
        the token states of every row, in row order, for the labels of every row."""
        mlm = self._mlm()
        inputs, labels = mlm.mask(encoder, view, features)
        states: list[Tensor] = []

        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            states.append(output.last_hidden_state)  # the token states the pooling reads

        handle = encoder.model.register_forward_hook(keep)
        try:
            with encoder.one_pass():
                emb = encoder({**features, "input_ids": inputs}, augment=view.augment)
        finally:
            handle.remove()
        if len(states) != 1:
            raise RuntimeError(f"the masked anchors ran {len(states)} encoder passes, not 1")
        sums = mlm.token_sums(encoder, states[-1], labels)
        emb = fp32(emb)  # the MLM sums would lose digits in half precision
        return torch.cat([emb, sums.to(emb.dtype)], dim=1)

    def loss(self, outputs: dict[str, Tensor], batch: SpanBatch) -> Parts:
        anchors = outputs["anchors"]
        mlm_out = None
        if self.in_pass:
            anchors, mlm_out = anchors[:, :-2], anchors[:, -2:]
        elif self.mlm is not None:
            mlm_out = outputs["mlm"]
        positives = mean_positives(fp32(outputs["positives"]), batch.num_positives)
        loss, accuracy = gathered_nt_xent(
            fp32(anchors), positives, temperature=self.config.temperature
        )
        parts: Parts = {"contrastive": LossPart(loss), "accuracy": accuracy}
        if mlm_out is not None:
            parts["mlm"] = self._mlm().part(mlm_out, self.config.mlm_weight)
        # a data count, logged with every training record (the same on every process)
        parts["short_documents"] = accuracy.new_tensor(float(batch.short_documents))
        return parts
