"""Periodic STS evaluation inside training (``contrasent.eval.sts``) and model selection."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from contrasent.errors import UserError
from contrasent.train.config import EvalConfig

METRIC_PATHS = {
    "stsb": "tasks.STSBenchmark.spearman.{split}",
    "sickr": "tasks.SICKRelatedness.spearman.{split}",
    "avg": "avg",
}


def _lookup(results: dict[str, Any], metric: str, mode: str) -> tuple[Any, str | None, str]:
    """Walk ``metric`` (a name of METRIC_PATHS or a dotted path) into the results:
    (value, first missing key or None, the dotted path)."""
    path = METRIC_PATHS.get(metric, metric).format(split="dev" if mode == "dev" else "test")
    value: Any = results
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None, key, path
        value = value[key]
    return value, None, path


def metric_value(results: dict[str, Any], metric: str, mode: str) -> float | None:
    """The selection number in an ``evaluate_sts`` result (None: undefined, e.g. collapse)."""
    value, missing, path = _lookup(results, metric, mode)
    if missing is not None:
        raise UserError(
            f"eval.metric {metric!r}: no {missing!r} in the STS results (path {path}); "
            f"use one of {', '.join(METRIC_PATHS)} or a dotted path"
        )
    return None if value is None else float(value)


def run_sts(module: nn.Module, cfg: EvalConfig) -> dict[str, Any]:
    """``evaluate_sts`` on ``module.encoder`` in eval mode (dropout off); train mode restored."""
    from contrasent.eval.sts import evaluate_sts

    encoder = module.encoder
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return evaluate_sts(
                lambda texts: encoder.encode(texts, batch_size=len(texts), show_progress=False),
                data_dir=cfg.data_dir,
                mode=cfg.mode,
                batch_size=cfg.batch_size,
                diagnostics=True,  # alignment / uniformity on STS-B dev, from the same embeddings
            )
    finally:
        module.train(was_training)


def eval_record(
    step: int,
    results: dict[str, Any],
    cfg: EvalConfig,
    value: float | None,
    best: float | None,
    best_step: int | None,
) -> dict[str, Any]:
    """The ``metrics.jsonl`` line of one evaluation (``alignment`` / ``uniformity``: STS-B dev,
    Wang & Isola 2020, None when STS-B was not evaluated)."""
    diag = results.get("diagnostics") or {}
    return {
        "step": step,
        "kind": "eval",
        "metric": value,
        "best": best,
        "best_step": best_step,
        "stsb": _lookup(results, "stsb", cfg.mode)[0],
        "sickr": _lookup(results, "sickr", cfg.mode)[0],
        "avg": results.get("avg"),
        "alignment": diag.get("alignment"),
        "uniformity": diag.get("uniformity"),
        "results": results,
    }


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
