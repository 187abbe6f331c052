"""The objective contract shared by every method.

An objective is a small ``nn.Module`` with a typed options dataclass (``Config``), the batch type
it consumes, and three steps the training loop calls (plain, or under a gradient cache):

1. ``views(batch) -> list[View]``: what to run through the encoder. A :class:`View` is texts plus
   an optional embedding-level augmentation (ConSERT) and a ``mode`` the objective dispatches on
   in ``embed`` ("embed": a sentence embedding; e.g. "mlm": a per-row masked-LM loss);
2. ``embed(encoder, view, features) -> Tensor``: one ROW-WISE output per text of the view
   (``[rows, D]``), given the view (or a slice of it) and its tokenized texts. Row-wise means
   row ``i``'s output depends on text ``i`` (and randomness) only, so the loop may run a view in
   one pass, in mini-batches (the gradient cache), or concatenated with other views of the
   same mode and no augmentation (plain SimCSE: ``[x; x]`` in ONE pass, two dropout masks);
3. ``loss(outputs, batch) -> Parts``: the view outputs (by view name) -> named parts. A
   :class:`LossPart` is a loss with its weight: the training loss is ``sum(weight * value)``,
   every part is logged under its name; plain tensors are logged diagnostics (accuracy).

Randomness inside ``embed`` comes from torch's global generators (dropout, augmentations: the
gradient cache records and replays them per mini-batch) or from generators keyed by the view's
per-row ``keys`` (MLM masks: independent of chunking and of the number of processes).

Heads used only in training (SimCSE's MLP, the MLM head, TSDAE's decoder, an NLI classifier) are
submodules of the objective, built in ``setup(encoder)``, never of the encoder: saving the
encoder never saves them. An objective whose step cannot be split this way (e.g. one whose
second view needs the gradient of a loss on the first) overrides ``forward`` and sets
``supports_gradient_cache = False``; the loop then refuses ``train.mini_batch_size`` before step 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from contrasent.core.options import describe
from contrasent.data.batches import Batch


@dataclass
class View:
    """Texts to run through the encoder, with what makes this view different.

    Attributes:
        name: Key of this view's output in ``loss(outputs, ...)`` (unique per objective).
        texts: One text per output row.
        augment: Embedding-level augmentation applied inside the encoder forward (ConSERT's
            shuffle, cutoff, ...; see ``Encoder.forward``); None: plain.
        mode: What ``embed`` computes for it ("embed": the sentence embedding).
        keys: Per-row keys of keyed randomness (``data.batches.row_keys``), when the view's
            randomness is keyed rather than drawn from the global generators.
    """

    name: str
    texts: list[str]
    augment: Any = None
    mode: str = "embed"
    keys: list[tuple[int, ...]] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def slice(self, start: int, stop: int) -> View:
        keys = None if self.keys is None else self.keys[start:stop]
        return dataclasses.replace(self, texts=self.texts[start:stop], keys=keys)

    def take(self, rows: Sequence[int]) -> View:
        """The view's rows ``rows``, in that order (the gradient cache's length-sorted passes).
        A subclass with more per-row fields overrides this as well as ``slice``."""
        keys = None if self.keys is None else [self.keys[i] for i in rows]
        return dataclasses.replace(self, texts=[self.texts[i] for i in rows], keys=keys)

    def shares_pass_with(self, other: View) -> bool:
        """Whether the two may run as one concatenated encoder pass."""
        return self.mode == other.mode and self.augment is None and other.augment is None

    @staticmethod
    def concat(views: Sequence[View]) -> View:
        keys = None if any(v.keys is None for v in views) else [k for v in views for k in v.keys]
        first = views[0]
        texts = [t for v in views for t in v.texts]
        return View("+".join(v.name for v in views), texts, first.augment, first.mode, keys)


@dataclass
class LossPart:
    """A named loss term: the training loss is the sum of ``weight * value`` over parts."""

    value: Tensor
    weight: float = 1.0


Parts = dict[str, "LossPart | Tensor"]


def total_loss(parts: Parts) -> Tensor:
    """``sum(weight * value)`` over the loss parts (the number that is backpropagated)."""
    losses = [p.weight * p.value for p in parts.values() if isinstance(p, LossPart)]
    if not losses:
        raise ValueError("an objective's loss() returned no LossPart")
    return torch.stack([x.float() if x.dtype != torch.float64 else x for x in losses]).sum()


def loss_record(parts: Parts) -> dict[str, Tensor]:
    """``{"loss": total (with graph), name: detached value, ...}``: what the loop logs."""
    record = {"loss": total_loss(parts)}
    for name, part in parts.items():
        value = part.value if isinstance(part, LossPart) else part
        record[name] = value.detach()
    return record


@dataclass
class NoOptions:
    """An objective without options."""


class Objective(nn.Module):
    """Base class of every objective (see the module docstring for the contract)."""

    #: the name recipes select it by (``objective: {name: ...}``)
    name: ClassVar[str] = ""
    #: how a model card names the method (default: ``name``)
    method: ClassVar[str] = ""
    #: BibTeX of the paper it implements, cited by the model card of a model it trained
    citation: ClassVar[str] = ""
    #: its options dataclass; field docs in an ``Attributes:`` docstring section
    Config: ClassVar[type] = NoOptions
    #: the batch dataclass it consumes (checked against the data kind before training)
    batch_type: ClassVar[type] = Batch
    #: False: ``forward`` is not views/embed/loss, and the gradient cache cannot run it
    supports_gradient_cache: ClassVar[bool] = True
    #: False: its loss needs the full embedding width (a classifier or decoder over it), so
    #: ``objective.matryoshka`` cannot truncate its views
    matryoshka: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A custom step that is not views/embed/loss would be skipped by the gradient cache.
        if "forward" in cls.__dict__ and cls.supports_gradient_cache:
            raise TypeError(
                f"{cls.__name__} overrides forward(): set supports_gradient_cache = False "
                "(the gradient cache runs views/embed/loss, never forward)"
            )

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()

    # --------------------------------------------------------------- the contract
    def setup(self, encoder: Any) -> None:
        """Build training-only heads that need the encoder's sizes; called before the optimizer."""

    def views(self, batch: Any) -> list[View]:
        raise NotImplementedError

    def embed(self, encoder: Any, view: View, features: dict[str, Tensor]) -> Tensor:
        """One output row per text; default: the encoder's pooled sentence embedding."""
        return encoder(features, augment=view.augment)

    def loss(self, outputs: dict[str, Tensor], batch: Any) -> Parts:
        raise NotImplementedError

    def embedding_width(self, view: View, output: Tensor) -> int | None:
        """How many leading columns of ``embed``'s output for ``view`` are the sentence
        embedding (``objective.matryoshka`` truncates those); None: the view is no embedding
        (an MLM view's loss sums)."""
        return output.shape[-1] if view.mode == "embed" else None

    # --------------------------------------------------------------- the plain step
    def forward(self, encoder: Any, batch: Any, max_length: int | None = None) -> dict[str, Tensor]:
        """The whole step without a gradient cache: the loss record (``"loss"`` with graph)."""
        outputs = embed_views(self, encoder, self.views(batch), max_length)
        return loss_record(self.loss(outputs, batch))

    def config_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.config)}

    @classmethod
    def describe(cls) -> str:
        """Help text: the first docstring line and every option with its default."""
        import textwrap

        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        head = textwrap.fill(f"{cls.name}: {' '.join(doc.split())}", 100)
        return f"{head}\n{describe(cls.Config, indent='    ')}"


def embed_views(
    objective: Objective, encoder: Any, views: list[View], max_length: int | None
) -> dict[str, Tensor]:
    """Every view's output, consecutive views that may share a pass concatenated into one."""
    outputs: dict[str, Tensor] = {}
    groups: list[list[View]] = []
    for view in views:
        if groups and groups[-1][-1].shares_pass_with(view):
            groups[-1].append(view)
        else:
            groups.append([view])
    for group in groups:
        view = group[0] if len(group) == 1 else View.concat(group)
        out = objective.embed(encoder, view, encoder.tokenize(view.texts, max_length=max_length))
        for v, part in zip(group, out.split([len(v) for v in group]), strict=True):
            outputs[v.name] = part
    return outputs


__all__ = [
    "LossPart",
    "NoOptions",
    "Objective",
    "Parts",
    "View",
    "embed_views",
    "loss_record",
    "total_loss",
]
