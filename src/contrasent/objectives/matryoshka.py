"""Matryoshka representation learning (Kusupati et al., 2022, arXiv:2205.13147) around any
objective whose loss reads its views' embeddings: ``objective: {name: pairs, matryoshka:
{dims: [384, 256, 128, 64]}}``.

One forward pass per view (the inner objective's ``views`` and ``embed``, untouched, so the
gradient cache and several processes work as for the inner objective); the loss is
``sum_d weight_d * inner.loss(outputs truncated to d)``, where each embedding view's output is cut
to its first ``d`` columns and L2-normalised again (sentence-transformers' ``MatryoshkaLoss``
``shrink``; every in-batch objective scores by cosine, so the normalisation changes nothing there
and makes the truncation the one ``--dim`` applies at inference). Non-embedding columns (an MLM
view's loss sums) pass through unchanged: as in ``MatryoshkaLoss`` the whole inner loss, its
auxiliaries included, is counted at every dimension. Parts are logged per dimension
(``contrastive@64``). The encoder records the dims (``Encoder.matryoshka_dims``), so the saved
model carries them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from contrasent.core.errors import UserError
from contrasent.core.rng import keyed_rng
from contrasent.model.dims import truncate
from contrasent.objectives.base import LossPart, Objective, Parts, View

log = logging.getLogger(__name__)
MATRYOSHKA_KEY = 0x6D6174  # keyed-RNG stream of dims_per_step's draw


@dataclass
class MatryoshkaConfig:
    """Options of ``objective.matryoshka`` (wraps the objective named by ``objective.name``).

    Attributes:
        dims: Embedding dimensions trained, e.g. [384, 256, 128, 64] (include the model's full
            dimension; each at most that).
        weights: One loss weight per dimension (default: 1 each).
        dims_per_step: Train a random subset of this many dimensions each step (0: all); the
            draw is keyed by the step, the same on every process.
        seed: Seed of that draw.
    """

    dims: list[int] = field(default_factory=list)
    weights: list[float] | None = None
    dims_per_step: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.dims:
            raise ValueError("dims: give at least one dimension, e.g. [384, 256, 128, 64]")
        if any(d < 1 for d in self.dims) or len(set(self.dims)) != len(self.dims):
            raise ValueError(f"dims must be distinct positive numbers, got {self.dims}")
        weights = self.weights if self.weights is not None else [1.0] * len(self.dims)
        if len(weights) != len(self.dims):
            raise ValueError(
                f"weights has {len(weights)} entries for {len(self.dims)} dims; give one per dim"
            )
        if any(w < 0 for w in weights):
            raise ValueError(f"weights must be >= 0, got {weights}")
        if not 0 <= self.dims_per_step <= len(self.dims):
            raise ValueError(f"dims_per_step must be in [0, {len(self.dims)}]")
        # largest first, as MatryoshkaLoss sorts them
        pairs = sorted(zip(self.dims, weights, strict=True), key=lambda p: -p[0])
        self.dims = [d for d, _ in pairs]
        self.weights = [float(w) for _, w in pairs]


def check_wrappable(cls: type[Objective]) -> None:
    """UserError unless objective ``cls``'s loss reads only its views' embeddings."""
    if not cls.matryoshka or not cls.supports_gradient_cache:
        raise UserError(
            f"objective.matryoshka: {cls.name}'s loss needs the full embedding width (a head "
            "over it, or a step that is not views/embed/loss); Matryoshka wraps in-batch "
            "objectives (pairs, simcse_unsup, simcse_sup, consert, declutr)",
            "objective.matryoshka",
        )


class Matryoshka(Objective):
    """The inner objective's loss at several truncated embedding dimensions, weighted."""

    name = "matryoshka"
    method = "Matryoshka representation learning"
    Config = MatryoshkaConfig
    citation = """@inproceedings{kusupati2022matryoshka,
  title = {Matryoshka Representation Learning},
  author = {Kusupati, Aditya and Bhatt, Gantavya and Rege, Aniket and Wallingford, Matthew and
            Sinha, Aditya and Ramanujan, Vivek and Howard-Snyder, William and Chen, Kaifeng and
            Kakade, Sham and Jain, Prateek and Farhadi, Ali},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year = {2022}
}"""

    def __init__(self, inner: Objective, config: MatryoshkaConfig) -> None:
        check_wrappable(type(inner))
        super().__init__(config)
        self.inner = inner
        self.batch_type = inner.batch_type  # what the loop checks against the data kind
        self._views: dict[str, View] = {}

    def setup(self, encoder: Any) -> None:
        self.inner.setup(encoder)
        if getattr(self.inner, "mlp", None) is not None:
            raise UserError(
                f"objective.matryoshka: {self.inner.name}'s training-only MLP would be truncated, "
                "not the saved embedding; set objective.mlp false",
                "objective.mlp",
            )
        full = encoder.hidden_size
        if max(self.config.dims) > full:
            raise UserError(
                f"objective.matryoshka.dims {self.config.dims}: {max(self.config.dims)} is larger "
                f"than the model's embedding dimension {full}",
                "objective.matryoshka",
            )
        if full not in self.config.dims:
            log.warning(
                "objective.matryoshka.dims %s leave out the full dimension %d: the untruncated "
                "embedding is not trained as such",
                self.config.dims,
                full,
            )
        encoder.matryoshka_dims = list(self.config.dims)

    def config_dict(self) -> dict[str, Any]:
        import dataclasses

        return {**self.inner.config_dict(), "matryoshka": dataclasses.asdict(self.config)}

    def views(self, batch: Any) -> list[View]:
        views = self.inner.views(batch)
        self._views = {v.name: v for v in views}  # the modes loss() truncates by
        return views

    def embed(self, encoder: Any, view: View, features: dict[str, Tensor]) -> Tensor:
        return self.inner.embed(encoder, view, features)

    def embedding_width(self, view: View, output: Tensor) -> int | None:
        return self.inner.embedding_width(view, output)

    def step_dims(self, batch: Any) -> list[tuple[int, float]]:
        """The (dim, weight) pairs of this step: all, or ``dims_per_step`` keyed by the step."""
        c = self.config
        pairs = list(zip(c.dims, c.weights, strict=True))
        if not c.dims_per_step or c.dims_per_step == len(pairs):
            return pairs
        index = int(getattr(batch, "index", 0) or 0)
        pick = keyed_rng(c.seed, MATRYOSHKA_KEY, index).choice(len(pairs), c.dims_per_step, False)
        return [pairs[i] for i in sorted(pick)]

    def truncated(self, outputs: dict[str, Tensor], dim: int) -> dict[str, Tensor]:
        """Every embedding view cut to ``dim`` columns and re-normalised; other columns kept."""
        out = {}
        for name, x in outputs.items():
            width = self.inner.embedding_width(self._views[name], x)
            if width is None:
                out[name] = x
            elif width == x.shape[-1]:
                out[name] = truncate(x, dim)
            else:
                out[name] = torch.cat([truncate(x[:, :width], dim), x[:, width:]], dim=-1)
        return out

    def loss(self, outputs: dict[str, Tensor], batch: Any) -> Parts:
        parts: Parts = {}
        for dim, weight in self.step_dims(batch):
            for name, part in self.inner.loss(self.truncated(outputs, dim), batch).items():
                if isinstance(part, LossPart):
                    parts[f"{name}@{dim}"] = LossPart(part.value, part.weight * weight)
                else:
                    parts[f"{name}@{dim}"] = part
        return parts
