"""Model selection inside training: the periodic evaluation (STS by default, or ``eval.tasks``:
task files and STS names; plus the held-out ``validation_loss``, ``contrasent.train.validation``),
the best model (``best/``) by ``eval.metric`` and patience, the last model (``final/``) and its
card.

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
from contrasent.core.fileio import link_model, no_room
from contrasent.core.results import own_tasks, task_metrics
from contrasent.eval.metric_paths import METRIC_PATHS, VALIDATION_LOSS, is_better, lookup
from contrasent.eval.sts import evaluate_sts
from contrasent.eval.suite import Plan, check_tasks, evaluate_own
from contrasent.model.dims import at_dim, memo_encode
from contrasent.train import checkpoint as ckpt
from contrasent.train.card import run_card_info, write_run_card
from contrasent.train.config import EvalConfig, TrainConfig
from contrasent.train.outputs import RunFolder
from contrasent.train.validation import ValidationSet

log = logging.getLogger(__name__)


def metric_value(results: dict[str, Any], metric: str, mode: str) -> float | None:
    """The selection number in an evaluation result (None: undefined, e.g. a collapsed STS)."""
    value, missing, path = lookup(results, metric, mode)
    if missing is not None:
        raise UserError(
            f"eval.metric {metric!r}: no {missing!r} in the evaluation results (path {path}); "
            f"use one of {', '.join(METRIC_PATHS)}, NAME.METRIC of eval.tasks or a dotted path"
        )
    return None if value is None else float(value)


def eval_plan(e: EvalConfig) -> Plan | None:
    """``eval.tasks`` checked, their files read to the last line (before any model loads);
    None: the default STS evaluation of ``eval.mode``."""
    if e.tasks is None:
        return None
    if not e.tasks:  # eval.tasks: [] -- no task at all (validation_loss alone)
        return Plan(None, None)
    plan = check_tasks(
        e.tasks if isinstance(e.tasks, str) else ",".join(e.tasks), e.mode, e.data_dir
    )
    if plan.transfer:
        raise UserError(
            f"eval.tasks: transfer tasks ({', '.join(plan.transfer)}) train a classifier per "
            "evaluation and are not run during training; evaluate final/ with contrasent eval",
            "eval.tasks",
        )
    return plan


def run_evaluation(module: nn.Module, cfg: EvalConfig, plan: Plan | None = None) -> dict[str, Any]:
    """The evaluation of ``module.encoder`` in eval mode (dropout off; train mode restored):
    the STS tasks of ``cfg.mode`` by default, else ``plan``'s STS tasks and task files."""
    encoder = module.encoder
    was_training = module.training
    module.eval()

    def encode(texts: list[str]) -> Any:
        return encoder.encode(texts, batch_size=len(texts), show_progress=False)

    # a Matryoshka objective's smaller sizes: the same embeddings truncated (encoded once)
    dims = [d for d in (getattr(encoder, "matryoshka_dims", None) or []) if d < encoder.hidden_size]
    if dims:
        encode = memo_encode(encode)
    try:
        with torch.no_grad():
            results = _evaluate_once(encode, cfg, plan, diagnostics=True)
            if dims:
                results["dims"] = {
                    str(d): _evaluate_once(at_dim(encode, d), cfg, plan) for d in dims
                }
            return results
    finally:
        module.train(was_training)


def _evaluate_once(
    encode: Any, cfg: EvalConfig, plan: Plan | None, diagnostics: bool = False
) -> dict[str, Any]:
    """The STS tasks of ``cfg.mode`` (or ``plan``'s) and ``plan``'s task files on ``encode``."""
    results: dict[str, Any] = {"mode": cfg.mode}
    if plan is None or plan.sts:
        results = evaluate_sts(
            encode,
            data_dir=cfg.data_dir,
            mode=cfg.mode,
            tasks=None if plan is None else plan.sts,
            batch_size=cfg.batch_size,
            diagnostics=diagnostics,  # alignment / uniformity on STS-B dev, same embeddings
        )
    if plan is not None and plan.own:
        own = evaluate_own(plan, encode, cfg.batch_size)
        results["tasks"] = {**results.get("tasks", {}), **own}
    return results


def _dim_numbers(results: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """``stsb@64``, ``avg@64``, ``NAME.METRIC@64``: each Matryoshka size's numbers."""
    out: dict[str, Any] = {}
    for d, res in (results.get("dims") or {}).items():
        out[f"stsb@{d}"] = lookup(res, "stsb", cfg.mode)[0]
        out[f"avg@{d}"] = res.get("avg")
        for name, own in own_tasks(res).items():
            out |= {f"{name}.{m}@{d}": v for m, v in task_metrics(own).items()}
    return out


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
        "stsb": lookup(results, "stsb", cfg.mode)[0],
        "sickr": lookup(results, "sickr", cfg.mode)[0],
        "avg": results.get("avg"),
        "alignment": diag.get("alignment"),
        "uniformity": diag.get("uniformity"),
        **{  # each task file's numbers by name (TensorBoard: eval/NAME.METRIC)
            f"{name}.{metric}": value
            for name, res in own_tasks(results).items()
            for metric, value in task_metrics(res).items()
        },
        **({"validation_loss": results["validation_loss"]} if "validation_loss" in results else {}),
        **_dim_numbers(results, cfg),
        "results": results,
    }


def fmt(value: float | None) -> str:
    """STS numbers (x100) with 2 decimals; metrics on a 0-1 scale and losses with 4."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"


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
        plan: Plan | None = None,
        validation: ValidationSet | None = None,
    ) -> None:
        self.cfg, self.folder, self.acc, self.state = cfg, folder, acc, state
        self.plan = plan  # eval.tasks, read once
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
            results = run_evaluation(module, e, self.plan)
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
            loss = results.get("validation_loss") if e.metric != VALIDATION_LOSS else None
            say(
                f"step {step}: {e.metric}={fmt(value)} (best "
                f"{fmt(state.best_metric)} at step {state.best_step})"
                + ("" if loss is None else f", validation_loss={fmt(loss)}")
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
        return (
            f"early stop at step {state.step}: {e.patience} evaluations without a new "
            f"best {e.metric} (best {fmt(state.best_metric)} at step {state.best_step})"
        )

    def save_encoder(self, module: nn.Module, name: str) -> Path:
        target = self.out / name
        needed = ckpt.state_bytes(module.encoder.state_dict())
        with no_room(self.out, needed, lambda: ckpt.intact_note(self.out)):
            module.encoder.save(target)  # atomic: temp folder, then rename
        return target

    def save_final(self, module: nn.Module) -> Path:
        """``final/``; hard links to ``best/`` when they hold the same weights (no second copy)."""
        target = self.out / "final"
        best = self.out / "best"
        if self.state.best_step == self.state.step and best.is_dir():
            with no_room(self.out, None, lambda: ckpt.intact_note(self.out)):
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
