"""Model selection inside training: the periodic evaluation (STS, ``contrasent.eval.sts``, and
the held-out ``validation_loss``, ``contrasent.train.validation``), the best model (``best/``)
and patience, the last model (``final/``) and its card.

The decisions live here; the loop calls :class:`Selection` at its evaluation steps and at the
end, and saves the shared counters (best metric and step, evaluations without a gain) in its
checkpoints.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrasent.core.errors import UserError
from contrasent.core.fileio import link_model
from contrasent.eval.sts import evaluate_sts
from contrasent.train.card import run_card_info, write_run_card
from contrasent.train.config import METRIC_PATHS, EvalConfig, TrainConfig
from contrasent.train.outputs import RunFolder
from contrasent.train.validation import ValidationSet

log = logging.getLogger(__name__)


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


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better: true of every correlation, not of a loss."""
    return metric != "validation_loss"


def is_better(value: float, best: float | None, metric: str) -> bool:
    """Whether ``value`` beats the best so far (None: there is none yet)."""
    if best is None:
        return True
    return value > best if higher_is_better(metric) else value < best


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
        **({"validation_loss": results["validation_loss"]} if "validation_loss" in results else {}),
        "results": results,
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


class Selection:
    """Evaluation, ``best/`` and patience, ``final/`` and its card for one run.

    ``state`` is the loop's checkpointed state (``best_metric``, ``best_step``,
    ``evals_without_gain``, ``last_eval_step``, ``step``), updated here in place.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        folder: RunFolder,
        acc: Any,
        state: Any,
        validation: ValidationSet | None = None,
    ) -> None:
        self.cfg, self.folder, self.acc, self.state = cfg, folder, acc, state
        self.validation = validation  # the held-out batches (main process; data.validation)
        self.out = Path(cfg.output_dir)
        self.first_eval: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.started = time.perf_counter()

    def evaluate(self, module: nn.Module, step: int, write: Any, say: Any) -> None:
        """STS (and the validation loss) on the main process; the others wait. Saves ``best/`` on
        improvement and counts evaluations without one for ``eval.patience`` (the decision is
        shared by all). ``write`` takes the metrics record, ``say`` a line for the person
        watching."""
        e, state = self.cfg.eval, self.state
        improved = torch.zeros(1, device=self.acc.device)
        if self.acc.is_main_process:
            results = run_sts(module, e)
            if self.validation is not None:
                results["validation_loss"] = self.validation.loss(module)
            value = metric_value(results, e.metric, e.mode)
            if value is not None and is_better(value, state.best_metric, e.metric):
                improved += 1
                state.best_metric, state.best_step = value, step
                if e.keep_best:
                    self.save_encoder(module, "best")
            record = eval_record(step, results, e, value, state.best_metric, state.best_step)
            write(record)
            self.last_eval = record
            digits = 2 if higher_is_better(e.metric) else 4
            loss = results.get("validation_loss") if higher_is_better(e.metric) else None
            say(
                f"step {step}: {e.metric}={fmt(value, digits)} (best "
                f"{fmt(state.best_metric, digits)} at step {state.best_step})"
                + ("" if loss is None else f", validation_loss={fmt(loss, 4)}")
            )
        if self.acc.num_processes > 1:
            improved = self.acc.reduce(improved, reduction="sum")
        state.evals_without_gain = 0 if improved.item() else state.evals_without_gain + 1
        state.last_eval_step = step
        self.acc.wait_for_everyone()

    def out_of_patience(self) -> str | None:
        """The early-stop message once ``eval.patience`` evaluations brought no new best."""
        e, state = self.cfg.eval, self.state
        if not (e.patience and state.evals_without_gain >= e.patience):
            return None
        digits = 2 if higher_is_better(e.metric) else 4
        return (
            f"early stop at step {state.step}: {e.patience} evaluations without a new "
            f"best {e.metric} (best {fmt(state.best_metric, digits)} at step {state.best_step})"
        )

    def save_encoder(self, module: nn.Module, name: str) -> Path:
        target = self.out / name
        module.encoder.save(target)  # atomic: temp folder, then rename
        return target

    def save_final(self, module: nn.Module) -> Path:
        """``final/``; hard links to ``best/`` when they hold the same weights (no second copy)."""
        target = self.out / "final"
        best = self.out / "best"
        if self.state.best_step == self.state.step and best.is_dir():
            link_model(best, target)
            log.info("final/ holds the weights of best/ (step %d): hard-linked", self.state.step)
        else:
            self.save_encoder(module, "final")
        self.folder.commit()
        return target

    def write_card(self, module: nn.Module, folder: Path) -> None:
        """``final/README.md`` with the run: recipe, steps, this session's time, STS before and
        after (a hard-linked ``best/`` keeps its own card: the card is replaced, not edited)."""
        info = run_card_info(
            self.cfg.to_dict(),
            steps=self.state.step,
            time_s=time.perf_counter() - self.started,
            sts_before=(self.first_eval or {}).get("results"),
            sts=(self.last_eval or {}).get("results"),
        )
        card = {"model_name": str(folder), **module.encoder.card_info(), **info}
        write_run_card(folder, card)
