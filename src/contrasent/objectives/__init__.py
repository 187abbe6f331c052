"""Training objectives and their registry (recipe name -> class).

``build_objective(name, encoder, **options)`` validates ``options`` against the objective's
``Config`` dataclass (an unknown option names the closest valid one), constructs the objective
and runs its ``setup(encoder)`` (training-only heads such as SimCSE's MLP or the MLM head need
the encoder's sizes and must exist before the optimizer is built). The option ``matryoshka``
(``{dims: [...], weights: [...]}``) of any in-batch objective wraps it in
:class:`~contrasent.objectives.matryoshka.Matryoshka`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contrasent.core.errors import UserError
from contrasent.core.options import build_options, suggest
from contrasent.objectives.base import LossPart, Objective, View
from contrasent.objectives.consert import ConSERT, ConSERTJoint, ConSERTJointAdv
from contrasent.objectives.contrastive_pairs import Contrastive, OnlineContrastive
from contrasent.objectives.declutr import DeCLUTR
from contrasent.objectives.distill import DistillMarginMSE, DistillMSE
from contrasent.objectives.matryoshka import Matryoshka, MatryoshkaConfig, check_wrappable
from contrasent.objectives.nli_head import NLISoftmax
from contrasent.objectives.pairs import PairsInBatch
from contrasent.objectives.scored_pairs import AnglE, CoSENT, CosineMSE
from contrasent.objectives.simcse import SimCSESup, SimCSEUnsup
from contrasent.objectives.tsdae import TSDAE

OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Add an objective class under its ``name`` (one name, one class); usable as a decorator."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if OBJECTIVES.get(cls.name, cls) is not cls:
        raise ValueError(
            f"objective name {cls.name!r} is already taken by {OBJECTIVES[cls.name].__name__}"
        )
    OBJECTIVES[cls.name] = cls
    return cls


for _cls in (
    SimCSEUnsup,
    SimCSESup,
    PairsInBatch,
    DeCLUTR,
    ConSERT,
    ConSERTJoint,
    ConSERTJointAdv,
    NLISoftmax,
):
    register(_cls)
register(TSDAE)
for _cls in (CoSENT, AnglE, CosineMSE, Contrastive, OnlineContrastive):
    register(_cls)
register(DistillMSE)
register(DistillMarginMSE)


def objective_class(name: str) -> type[Objective]:
    """The registered class ``name``; UserError with the closest name otherwise."""
    if name not in OBJECTIVES:
        raise UserError(
            f"unknown objective {name!r}{suggest(name, list(OBJECTIVES))}; "
            f"known: {', '.join(sorted(OBJECTIVES))}",
            "objective.name",
        )
    return OBJECTIVES[name]


def objective_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The typed options of objective ``name`` (checked; no model needed); its
    ``matryoshka`` option is checked by :func:`matryoshka_config`."""
    cls = objective_class(name)
    own = {k: v for k, v in (options or {}).items() if k != "matryoshka"}
    config = build_options(cls.Config, own, f"objective {name}", "objective")
    if matryoshka_config(options) is not None:
        check_wrappable(cls)
    return config


def matryoshka_config(options: dict[str, Any] | None) -> MatryoshkaConfig | None:
    """The typed ``objective.matryoshka`` options, None when not set."""
    raw = (options or {}).get("matryoshka")
    if raw is None:
        return None
    label, key = "objective.matryoshka", "objective.matryoshka"
    if not isinstance(raw, dict):
        raise UserError(f"{label} must be a mapping like {{dims: [384, 256, 128, 64]}}", key)
    return build_options(MatryoshkaConfig, raw, label, key)


def wrapper_card(section: Mapping[str, Any]) -> tuple[str, list[str], list[str]]:
    """What wraps the objective of a recipe's ``objective`` section, as a model card says it:
    a suffix to the method's name, the wrappers' BibTeX and their tags (the objective's own come
    from its class). Here, beside :func:`build_objective`, the one place that composes them."""
    wrap = section.get("matryoshka")
    if not wrap or not isinstance(wrap, Mapping):
        return "", [], []
    suffix = f" + {Matryoshka.method} (dims {wrap.get('dims')})"
    return suffix, [Matryoshka.citation], [Matryoshka.name]


def build_objective(name: str, encoder: Any = None, **options: Any) -> Objective:
    """Instantiate the objective ``name`` with ``options`` and set it up on ``encoder``."""
    objective = objective_class(name)(objective_config(name, options))
    wrap = matryoshka_config(options)
    if wrap is not None:
        objective = Matryoshka(objective, wrap)
    if encoder is not None:
        objective.setup(encoder)
    return objective


def describe_objectives() -> str:
    """Every objective with its options and defaults (``contrasent train --help``)."""
    each = [OBJECTIVES[n].describe() for n in sorted(OBJECTIVES)]
    wrapper = Matryoshka.describe().replace(
        "matryoshka:", "matryoshka (option of any in-batch one):"
    )
    return "\n\n".join([*each, wrapper])


__all__ = [
    "OBJECTIVES",
    "ConSERT",
    "ConSERTJoint",
    "ConSERTJointAdv",
    "DeCLUTR",
    "LossPart",
    "Matryoshka",
    "NLISoftmax",
    "Objective",
    "PairsInBatch",
    "SimCSESup",
    "SimCSEUnsup",
    "TSDAE",
    "View",
    "build_objective",
    "describe_objectives",
    "objective_class",
    "objective_config",
    "register",
]
