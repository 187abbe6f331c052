"""The model card of a training run: the recipe and the run's numbers as the plain ``info`` that
:mod:`contrasent.model.card` renders, plus what only the objectives know (the method's name in
prose and its paper's BibTeX)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contrasent.model.card import write_model_card
from contrasent.objectives import OBJECTIVES, wrapper_card


def objective_card(name: str | None) -> tuple[str | None, str]:
    """How a card names the objective ``name``'s method, and its paper's BibTeX: both are the
    objective's own (``Objective.method`` / ``citation``); an unknown name stands for itself."""
    cls = OBJECTIVES.get(name or "")
    return (cls.method or cls.name, cls.citation) if cls else (name, "")


def with_objective(info: Mapping[str, Any]) -> dict[str, Any]:
    """``info`` with the objective's citation before any the caller gave."""
    cites = [c for c in (objective_card(info.get("objective"))[1], info.get("citation")) if c]
    return {**info, **({"citation": "\n\n".join(cites)} if cites else {})}


def write_run_card(folder: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    """:func:`contrasent.model.card.write_model_card` with the objective's citation added."""
    return write_model_card(folder, with_objective(info))


def _data_files(data: Any) -> list[str]:
    """Every ``path``/``paths`` string of a recipe's data section (nested sources included)."""
    found: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            if key in ("path", "paths", "data_config") and isinstance(value, str):
                found.append(value)
            elif key == "paths" and isinstance(value, list):
                found += [v for v in value if isinstance(v, str)]
            else:
                found += _data_files(value)
    elif isinstance(data, list):
        for item in data:
            found += _data_files(item)
    return list(dict.fromkeys(found))


def run_card_info(
    recipe: Mapping[str, Any],
    steps: int | None = None,
    time_s: float | None = None,
    sts_before: Mapping[str, Any] | None = None,
    sts: Mapping[str, Any] | None = None,
    transfer: Mapping[str, Any] | None = None,
    hardware: str | None = None,
) -> dict[str, Any]:
    """``info`` for :func:`write_model_card` from a training run: ``recipe`` is
    ``TrainConfig.to_dict()``; ``sts_before`` / ``sts`` the first / last ``evaluate_sts`` results
    (their ``diagnostics`` are shown), ``transfer`` an ``evaluate_transfer`` result."""
    model = recipe.get("model") or {}
    objective = (recipe.get("objective") or {}).get("name")
    info: dict[str, Any] = {
        "base_model": model.get("name_or_path"),
        "objective": objective,
        "method": objective_card(objective)[0],
        "datasets": _data_files(recipe.get("data")),
        "recipe": dict(recipe),
        "training": {
            "steps": steps,
            "time_s": time_s,
            "batch_size": (recipe.get("train") or {}).get("batch_size"),
            "hardware": hardware,
        },
        "tags": [objective] if objective else [],
    }
    suffix, cites, tags = wrapper_card(recipe.get("objective") or {})  # objective.matryoshka
    if suffix:
        info["method"] = f"{info['method']}{suffix}"
        info["citation"] = "\n\n".join(cites)
        info["tags"] += tags
    if sts_before:
        info["sts_before"] = sts_before
    if sts:
        info["sts"] = sts
        if sts.get("diagnostics"):
            info["diagnostics"] = sts["diagnostics"]
    if transfer:
        info["transfer"] = transfer
    return info
