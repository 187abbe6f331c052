"""Training objectives and their registry (config name -> class).

``build_objective(name, encoder, **options)`` constructs an objective from a recipe and runs its
``setup(encoder)`` (training-only heads such as SimCSE's MLP or the MLM head need the encoder's
sizes and must exist before the optimizer is built).
"""

from __future__ import annotations

from typing import Any

from contrasent.errors import UserError
from contrasent.objectives.base import InBatchObjective, Objective
from contrasent.objectives.pairs import PairsInBatch
from contrasent.objectives.simcse import SimCSESup, SimCSEUnsup

OBJECTIVES: dict[str, type[Objective]] = {
    "simcse_unsup": SimCSEUnsup,
    "simcse_sup": SimCSESup,
    "pairs": PairsInBatch,
}


def register(name: str, cls: type[Objective]) -> None:
    """Add an objective class under a recipe name (one name, one class)."""
    if OBJECTIVES.get(name, cls) is not cls:
        raise ValueError(f"objective name {name!r} is already taken by {OBJECTIVES[name].__name__}")
    OBJECTIVES[name] = cls


def build_objective(name: str, encoder: Any = None, **options: Any) -> Objective:
    """Instantiate the objective ``name`` with ``options`` and set it up on ``encoder``."""
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    try:
        objective = OBJECTIVES[name](**options)
    except TypeError as err:  # an unknown or misspelt option in the recipe
        raise UserError(f"objective {name}: {err}") from None
    if encoder is not None and hasattr(objective, "setup"):
        objective.setup(encoder)
    return objective


__all__ = [
    "OBJECTIVES",
    "InBatchObjective",
    "Objective",
    "PairsInBatch",
    "SimCSESup",
    "SimCSEUnsup",
    "build_objective",
    "register",
]
