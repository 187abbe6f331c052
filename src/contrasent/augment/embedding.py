"""Embedding-level augmentations (the Engine v2 ``EmbeddingAugmentation`` interface) and the
parser from recipe view names.

The encoder applies an augmentation in two places of one forward pass (``Encoder.forward(features,
augment=view)``):

* ``positions(position_ids, attention_mask)``: the position ids it passes to the HF model (token
  shuffle changes them; every other view returns them unchanged);
* ``embeddings(embedding_output, attention_mask)``: the output of the HF model's embeddings
  module (after its LayerNorm and dropout), through a forward hook.

The classes are thin: the math is in :mod:`contrasent.augment.views`. Their randomness comes from
torch's global generator on the tensors' device (no generator argument): the gradient cache
records and replays it per mini-batch, like dropout. A recipe names a view as a
string (``"shuffle"``) or a mapping (``{"name": "feature_cutoff", "rate": 0.2}``);
:func:`parse_view` turns either into an augmentation, raising :class:`UserError` for an unknown
name (with a did-you-mean) or a rate outside [0, 1).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from contrasent.augment import views as V
from contrasent.core.errors import UserError


class EmbeddingAugmentation:
    """Identity on both hooks; subclasses override the one they act on."""

    name = "none"

    def positions(self, position_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return position_ids

    def embeddings(self, embedding_output: Tensor, attention_mask: Tensor) -> Tensor:
        return embedding_output

    def config_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config_dict().items() if k != "name")
        return f"{type(self).__name__}({args})"


class NoAugmentation(EmbeddingAugmentation):
    """The "none" view: the plain forward pass."""


class TokenShuffle(EmbeddingAugmentation):
    """Shuffled position ids over the real tokens; token ids unchanged."""

    name = "shuffle"

    def positions(self, position_ids, attention_mask):
        return V.shuffle_positions(position_ids, attention_mask)


class _RateView(EmbeddingAugmentation):
    """A view with one rate in [0, 1) acting on the embedding output."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)

    def config_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate}


class TokenCutoff(_RateView):
    """Whole token rows zeroed (paper: rate 0.15; joint script: 0.1)."""

    name = "token_cutoff"

    def embeddings(self, embedding_output, attention_mask):
        return V.token_cutoff(embedding_output, attention_mask, self.rate)


class FeatureCutoff(_RateView):
    """Whole feature columns zeroed (paper: rate 0.2; sup-unsup script: 0.1)."""

    name = "feature_cutoff"

    def embeddings(self, embedding_output, attention_mask):
        return V.feature_cutoff(embedding_output, attention_mask, self.rate)


class SpanCutoff(_RateView):
    """One contiguous window of ``(1 - rate)`` of the real tokens kept, the other rows zeroed
    (still attended: the reference's cut tokens become attended padding; ``views.span_cutoff``)."""

    name = "span_cutoff"

    def embeddings(self, embedding_output, attention_mask):
        return V.span_cutoff(embedding_output, attention_mask, self.rate)


class EmbeddingDropout(_RateView):
    """Individual elements zeroed, no rescaling (paper: rate 0.2)."""

    name = "dropout"

    def embeddings(self, embedding_output, attention_mask):
        return V.embedding_dropout(embedding_output, attention_mask, self.rate)


class AdversarialPerturbation(EmbeddingAugmentation):
    """FGV noise added to the embedding output; needs the supervised loss's gradient.

    Parsed from a recipe with only ``epsilon``; the objective computes the gradient of its
    supervised loss w.r.t. the embedding output of the plain view and calls :meth:`with_grad`
    (or :meth:`with_noise`) to get the view of this batch. Using it without either is an error.

    ``base``: the plain view's captured embedding output. Given, the view *replaces* the
    recomputed output by ``base + noise``, as the reference does (``noise_embedding =
    embedding_output_a + noise_a`` handed in through the ``data_aug_adv`` flag): this matters only
    when the embeddings' own dropout is on, where a recomputed output has a new dropout mask.
    Without ``base`` the noise is added to the recomputed output.
    """

    name = "adversarial"
    needs_supervision = True

    def __init__(
        self, epsilon: float, noise: Tensor | None = None, base: Tensor | None = None
    ) -> None:
        self.epsilon = float(epsilon)
        self.noise = noise
        self.base = base

    def with_grad(
        self, grad: Tensor, attention_mask: Tensor, base: Tensor | None = None
    ) -> AdversarialPerturbation:
        noise = V.fgv_perturbation(grad, self.epsilon, attention_mask)
        return AdversarialPerturbation(self.epsilon, noise, base)

    def with_noise(self, noise: Tensor, base: Tensor | None = None) -> AdversarialPerturbation:
        return AdversarialPerturbation(self.epsilon, noise.detach(), base)

    def embeddings(self, embedding_output, attention_mask):
        if self.noise is None:
            raise RuntimeError(
                "adversarial view used before its perturbation was computed (with_grad)"
            )
        if self.noise.shape != embedding_output.shape:
            raise ValueError(
                f"adversarial noise {tuple(self.noise.shape)} does not match the embedding "
                f"output {tuple(embedding_output.shape)}"
            )
        start = embedding_output if self.base is None else self.base
        return start + self.noise.to(start.dtype)

    def config_dict(self) -> dict[str, Any]:
        return {"name": self.name, "epsilon": self.epsilon}


class CaptureEmbeddings:
    """Not a view: keeps the embedding output of one forward (with its graph) and passes it on
    unchanged, so an objective can take the gradient of a loss w.r.t. it (FGV)."""

    def __init__(self) -> None:
        self.output: Tensor | None = None

    def embeddings(self, embedding_output: Tensor, attention_mask: Tensor) -> Tensor:
        self.output = embedding_output
        return embedding_output


VIEWS: dict[str, type[EmbeddingAugmentation]] = {
    "none": NoAugmentation,
    "shuffle": TokenShuffle,
    "token_cutoff": TokenCutoff,
    "feature_cutoff": FeatureCutoff,
    "span_cutoff": SpanCutoff,
    "dropout": EmbeddingDropout,
    "adversarial": AdversarialPerturbation,
}
#: the reference's own spellings (``--da_final_*``, ``--data_augmentation_strategy``)
ALIASES = {"span": "span_cutoff", "adv": "adversarial"}
#: default rates from the paper's implementation details (section 4.1); span has none there
DEFAULT_RATES = {"token_cutoff": 0.15, "feature_cutoff": 0.2, "dropout": 0.2}


def view_names() -> list[str]:
    return list(VIEWS)


def parse_view(spec: str | Mapping[str, Any], where: str = "view") -> EmbeddingAugmentation:
    """A view from a recipe entry: ``"shuffle"`` or ``{"name": ..., "rate"/"epsilon": ...}``.

    ``where`` prefixes error messages (e.g. ``"configs/x.yaml: objective.views[1]"``).
    """
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise UserError(f"{where}: a view mapping needs a 'name' (one of {_known()})")
    else:
        raise UserError(f"{where}: a view is a name or a mapping with 'name', got {spec!r}")
    return _build(view_name(name, where), options, where)


def view_name(name: str, where: str = "view") -> str:
    """The canonical name of view ``name`` (aliases resolved); UserError with a did-you-mean."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in VIEWS:
        close = difflib.get_close_matches(key, [*VIEWS, *ALIASES], n=1, cutoff=0.5)
        hint = f"; did you mean {ALIASES.get(close[0], close[0])!r}?" if close else ""
        raise UserError(f"{where}: unknown view {name!r}{hint} (known: {_known()})")
    return key


def _known() -> str:
    return ", ".join(VIEWS)


def _build(key: str, options: dict[str, Any], where: str) -> EmbeddingAugmentation:
    allowed = {"rate"} if key in DEFAULT_RATES or key == "span_cutoff" else set()
    if key == "adversarial":
        allowed = {"epsilon"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        takes = f"takes only {sorted(allowed)}" if allowed else "takes no options"
        raise UserError(f"{where}: view {key!r} {takes}, got {unknown}")
    if key == "adversarial":
        return AdversarialPerturbation(_epsilon(options.get("epsilon"), where))
    if not allowed:
        return VIEWS[key]()
    rate = options.get("rate", DEFAULT_RATES.get(key))
    if rate is None:
        raise UserError(f"{where}: view {key!r} needs a rate in [0, 1) (the paper gives none)")
    return VIEWS[key](_rate(rate, key, where))


def _rate(rate: Any, key: str, where: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise UserError(f"{where}: view {key!r} rate must be a number in [0, 1), got {rate!r}")
    if not 0.0 <= float(rate) < 1.0:
        raise UserError(f"{where}: view {key!r} rate must be in [0, 1), got {rate}")
    return float(rate)


def _epsilon(eps: Any, where: str) -> float:
    if eps is None:
        raise UserError(
            f"{where}: view 'adversarial' needs an epsilon (the reference uses 0.01 for the "
            "contrastive adversarial view and 1.0 with --adv_training)"
        )
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps):
        raise UserError(f"{where}: adversarial epsilon must be a finite number, got {eps!r}")
    if eps <= 0:
        raise UserError(f"{where}: adversarial epsilon must be > 0, got {eps}")
    return float(eps)


def check_views(views: list[EmbeddingAugmentation], supervised: bool, where: str) -> None:
    """Refuse an adversarial view without a supervised loss to take its gradient from."""
    if not supervised and any(getattr(v, "needs_supervision", False) for v in views):
        raise UserError(
            f"{where}: the 'adversarial' view needs a supervised loss (its noise is the "
            "gradient of that loss): use objective consert_joint_adv on NLI pairs"
        )
