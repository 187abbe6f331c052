"""TSDAE (Wang, Reimers & Gurevych, 2021. "TSDAE: Using Transformer-based Sequential Denoising
Auto-Encoder for Unsupervised Sentence Embedding Learning", Findings of EMNLP 2021,
arXiv:2104.06979).

Each sentence is damaged (by default each word deleted with probability 0.6, one word always
kept), the encoder embeds the DAMAGED text, and a transformer decoder reconstructs the ORIGINAL
text token by token (teacher forcing) while its cross-attention sees only that one sentence
vector. The decoder is the checkpoint's architecture as a causal LM with cross-attention, tied to
the encoder by default (one parameter set); it is a training-only part of the objective and
never saved (``objectives/tsdae_parts.py``). The paper pools the raw first token ([CLS] "as
is"), which is our ``cls_before_pooler`` (our ``cls`` adds BERT's dense + tanh pooler).

How it runs on the shared loop:

* the noise is drawn in ``views()`` from a generator keyed by ``(seed, batch, global row)``
  (``data.batches.row_keys``): the same damaged text after a resume, on any number of processes
  and under any gradient-cache chunking;
* the whole per-sentence computation (encoder on the damaged text, decoder on the original) is
  one ROW-WISE view of mode ``"reconstruct"`` whose output is ``[rows, 3]``: the sentence's
  token cross-entropy sum, its token count and whether its target was truncated, as the MLM
  auxiliary does; ``loss()`` divides the sums by the token count of the GLOBAL batch
  (``distributed.all_reduce_sum``), so W processes equal one process and the mean is over
  tokens, the number sentence-transformers' ``DenoisingAutoEncoderLoss`` reports;
* so the gradient cache (``train.mini_batch_size``) is exact: it runs encoder AND decoder in
  mini-batches, replaying their dropout, and bounds the memory of both (tested: cache == plain).
  For a per-sentence loss it buys nothing but memory, at the cost of one extra forward;
  ``train.grad_accum`` with smaller batches is the cheaper way to the same update, up to the
  token normalisation (each accumulated batch is then a mean over its own tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor

from contrasent.augment.text_noise import check_noise, noise_text, tokenizer_words
from contrasent.core.distributed import all_reduce_sum, world_size
from contrasent.core.rng import keyed_rng
from contrasent.data.batches import SentenceBatch, row_keys
from contrasent.objectives.base import LossPart, Objective, Parts, View
from contrasent.objectives.tsdae_parts import (
    build_decoder,
    check_target_length,
    noise_mask_token,
    reconstruction_row_losses,
    tokenize_targets,
)

log = logging.getLogger(__name__)

NOISE_SALT = 0  # row_keys salt of the noise draw (other keyed draws on these rows use others)


@dataclass
class TSDAEConfig:
    """Options of TSDAE.

    Attributes:
        noise: How each sentence is damaged: "delete" (the paper's best: each word dropped with
            probability noise_ratio, one always kept), "swap" (neighbour pairs swapped), "mask"
            (words -> the tokenizer's mask token), "replace" (words -> random vocabulary words),
            "insert" or its alias "add" (random vocabulary words added before words). Words are
            split without NLTK (``augment/text_noise.py``).
        noise_ratio: Probability per word (per pair for swap); the paper: delete at 0.6.
        tie_decoder: Tie the decoder to the encoder (one parameter set, the paper's setting); only
            cross-attention and the LM head's transform are the decoder's own.
        decoder_name_or_path: An untied decoder's model (name or path), loaded as a causal LM with
            cross-attention, with the sentence embedding's hidden size; its own tokenizer
            tokenizes the targets. Only with tie_decoder false.
        max_target_length: Tokens of the original sentence the decoder reconstructs (longer ones
            are truncated and counted in the logged ``targets_truncated`` fraction). None: the
            encoder's model.max_seq_length. The damaged input is truncated at data.max_seq_length.
        seed: Seed of the noise; each sentence's draw is keyed by this and its place in the run.
    """

    noise: Literal["delete", "swap", "mask", "replace", "insert", "add"] = "delete"
    noise_ratio: float = 0.6
    tie_decoder: bool = True
    decoder_name_or_path: str | None = None
    max_target_length: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise_ratio <= 1.0:
            raise ValueError(f"noise_ratio must be in [0, 1], got {self.noise_ratio}")
        if self.max_target_length is not None and self.max_target_length < 2:
            raise ValueError(f"max_target_length must be >= 2, got {self.max_target_length}")
        if self.tie_decoder and self.decoder_name_or_path is not None:
            raise ValueError("decoder_name_or_path is for an untied decoder: set tie_decoder false")
        if not self.tie_decoder and not self.decoder_name_or_path:
            raise ValueError("tie_decoder false needs decoder_name_or_path (the decoder's model)")


@dataclass
class ReconstructionView(View):
    """The damaged texts (``texts``, what the encoder embeds) with their originals
    (``targets``, what the decoder reconstructs), row by row."""

    targets: list[str] = field(default_factory=list)

    def slice(self, start: int, stop: int) -> ReconstructionView:
        return replace(super().slice(start, stop), targets=self.targets[start:stop])

    def take(self, rows: Sequence[int]) -> ReconstructionView:
        return replace(super().take(rows), targets=[self.targets[i] for i in rows])


class TSDAE(Objective):
    """TSDAE (Wang, Reimers & Gurevych, 2021): the encoder embeds a damaged sentence (60% of
    its words deleted), a decoder tied to the encoder reconstructs the original from that
    vector alone. Unlabeled sentences only; use pooling cls_before_pooler (the paper's [CLS]).
    """

    name = "tsdae"
    method = "TSDAE (denoising auto-encoder)"
    Config = TSDAEConfig
    batch_type = SentenceBatch
    matryoshka = False  # the decoder attends to the full-width sentence vector
    MODE = "reconstruct"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.decoder: Any = None
        # the kind's name and ratio now (no model needed); its mask token / vocabulary in setup
        self.noise = check_noise(self.config.noise, self.config.noise_ratio, "-", ["-"])
        self.mask_token: str | None = None
        self.vocabulary: list[str] | None = None
        self.max_target_length = self.config.max_target_length
        self.lowercase = False
        self._warned_truncation = False

    def setup(self, encoder: Any) -> None:
        """Check the noise against the tokenizer and build the decoder (UserError before any
        training for a model or tokenizer the decoder cannot use)."""
        c, tok = self.config, encoder.tokenizer
        if self.noise == "mask":
            self.mask_token = noise_mask_token(encoder)
        if self.noise in ("replace", "insert"):
            self.vocabulary = tokenizer_words(tok)
        check_noise(self.noise, c.noise_ratio, self.mask_token, self.vocabulary)
        if encoder.pooling == "cls":
            log.warning(
                "TSDAE with pooling 'cls' trains BERT's dense+tanh pooler too; the paper pools "
                "the raw [CLS] token: pooling 'cls_before_pooler'"
            )
        self.decoder = build_decoder(encoder, c.decoder_name_or_path, c.tie_decoder)
        self.max_target_length = c.max_target_length or encoder.max_seq_length
        check_target_length(self.decoder, self.max_target_length)
        # a tied decoder reads the encoder's tokenizer, which the encoder may lowercase first
        self.lowercase = bool(c.tie_decoder and encoder.do_lower_case)

    # --------------------------------------------------------------- the contract
    def damage(self, text: str, key: tuple[int, ...]) -> str:
        """``text`` with this objective's noise, drawn from the generator keyed by ``key``."""
        return noise_text(
            text,
            keyed_rng(self.config.seed, *key),
            self.noise,
            self.config.noise_ratio,
            mask_token=self.mask_token,
            vocabulary=self.vocabulary,
        )

    def views(self, batch: SentenceBatch) -> list[View]:
        keys = row_keys(batch, salt=NOISE_SALT)
        noisy = [self.damage(t, k) for t, k in zip(batch.texts, keys, strict=True)]
        return [
            ReconstructionView(
                "reconstruction", noisy, mode=self.MODE, keys=keys, targets=list(batch.texts)
            )
        ]

    def embed(self, encoder: Any, view: View, features: dict[str, Tensor]) -> Tensor:
        """``[rows, 3]``: (token cross-entropy sum, token count, target truncated) per row."""
        if self.decoder is None:
            raise RuntimeError("TSDAE.setup(encoder) must run before training (build_objective)")
        if not isinstance(view, ReconstructionView):
            raise ValueError(f"TSDAE embeds its own reconstruction view, not {view.name!r}")
        sentence = encoder(features, augment=view.augment)  # the DAMAGED texts
        targets, truncated = tokenize_targets(
            self.decoder.tokenizer, view.targets, self.max_target_length, self.lowercase
        )
        buckets = getattr(encoder, "length_buckets", 1)  # as the encoder's passes run
        rows = reconstruction_row_losses(self.decoder, sentence, targets, buckets)  # ORIGINALS
        return _with_column(rows, truncated)

    def loss(self, outputs: dict[str, Tensor], batch: SentenceBatch) -> Parts:
        """The mean token cross-entropy over the GLOBAL batch, and the truncated fraction.

        ``W * local_sum / global_count``: DDP averages gradients over the W processes, so the
        update is that of ``global_sum / global_count``, as in ``MLMAuxiliary.part``."""
        out = outputs["reconstruction"]
        count = all_reduce_sum(out[:, 1].detach().sum())
        scale = world_size() / count.clamp(min=1.0)
        truncated = out[:, 2].detach().mean()
        self._warn_truncation(truncated)
        return {
            "reconstruction": LossPart(out[:, 0].sum() * scale),
            "targets_truncated": truncated,
        }

    def _warn_truncation(self, fraction: Tensor) -> None:
        if not self._warned_truncation and fraction.item() > 0:
            self._warned_truncation = True
            log.warning(
                "TSDAE: some sentences are longer than max_target_length=%d tokens; the decoder "
                "reconstructs their first %d tokens (the fraction is logged as targets_truncated)",
                self.max_target_length,
                self.max_target_length,
            )


def _with_column(rows: Tensor, flags: Tensor) -> Tensor:
    return torch.cat([rows, flags.to(device=rows.device, dtype=rows.dtype)[:, None]], dim=1)
