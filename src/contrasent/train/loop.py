"""The training loop: one for every method, built on ``accelerate``.

The same code runs on CPU, one GPU, several GPUs or nodes: start it with ``python``,
``accelerate launch`` or ``torchrun``. Per optimizer step:

* the data stream yields GLOBAL batches of ``train.batch_size`` rows (the in-batch candidates);
  every process takes its contiguous equal slice, and the objective gathers the outputs of all
  slices, so each row is contrasted with the whole global batch whatever the number of processes;
* the objective runs through one contract (``objectives.base``): its views are encoded (in one
  pass, or under the gradient cache in mini-batches: ``train.mini_batch_size``,
  :mod:`contrasent.train.gradcache`) and its named, weighted loss parts are summed;
* ``train.grad_accum`` batches are summed per step. Gradient accumulation does NOT add negatives:
  each batch is still contrasted only within itself; the gradient cache does;
* AdamW (no decay on biases/LayerNorm), linear warm-up/decay, gradient clipping, fp16/bf16 autocast
  (similarity logits and losses always in float32);
* STS evaluation every ``eval.every_steps`` and at the end, at the encoder's inference length (never
  the training truncation); the best model by ``eval.metric`` is saved to ``output_dir/best``, the
  last to ``output_dir/final`` (sentence-transformers folders holding the encoder only); optional
  early stopping after ``eval.patience`` evaluations without a new best;
* checkpoints (:mod:`contrasent.train.checkpoint`) every ``checkpoint.every_steps`` resume exactly;
* a non-finite loss stops the run with :class:`TrainingDiverged`, before the bad gradients touch
  the weights; the checkpoints written so far are kept;
* a recipe with ``stages`` runs them in sequence (:mod:`contrasent.train.stages`).

Gradient clipping under several processes clips the norm of the averaged gradient, which is the
true gradient of the global-batch loss (SimCSE's per-process loss over gathered rows makes its
gradient 1/W of that, so the same ``grad_clip`` clips at a W times larger true norm there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrasent.distributed import average_gradients
from contrasent.errors import UserError
from contrasent.objectives.base import Objective
from contrasent.train import checkpoint as ckpt
from contrasent.train.batching import local_slice
from contrasent.train.config import TrainConfig, as_train_config
from contrasent.train.evaluation import eval_record, fmt, metric_value, run_sts
from contrasent.train.gradcache import gradcache_step
from contrasent.train.metrics import MetricsWriter, ProgressBar
from contrasent.train.optim import build_optimizer, build_scheduler, warmup_steps
from contrasent.train.outputs import RunFolder
from contrasent.train.setup import (
    check_custom_objective,
    compile_encoder,
    make_accelerator,
    reseed_missing_rank,
    total_steps,
)

log = logging.getLogger(__name__)

#: callback(step, record) after every optimizer step (all processes); True asks to stop
Callback = Callable[[int, dict[str, Any]], "bool | None"]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stopped before updating the weights with it."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM: the run finished its step, saved a checkpoint and stopped.

    ``exit_code`` is the shell's convention (130 for SIGINT, 143 for SIGTERM); ``checkpoint``
    is where ``resume_from: latest`` continues (None when interrupted before the first step).
    """

    def __init__(self, message: str, signum: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.step, self.checkpoint = step, checkpoint


class TrainModule(nn.Module):
    """Encoder + objective as one module: what ``accelerator.prepare`` (DDP) wraps.

    ``forward(batch)`` is the objective's plain step (its loss record), with the training
    truncation ``max_length``.
    """

    def __init__(self, encoder: nn.Module, objective: Objective, max_length: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.objective = objective
        self.max_length = max_length

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.objective(self.encoder, batch, self.max_length)


@dataclass
class TrainResult:
    """What a run (or a staged run: ``stages`` holds each stage's result) produced."""

    output_dir: Path
    final_dir: Path | None
    best_dir: Path | None
    steps: int
    best_metric: float | None = None
    best_step: int | None = None
    first_eval: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    last_train: dict[str, Any] = field(default_factory=dict)
    last_checkpoint: Path | None = None
    stopped_early: bool = False
    stages: list[tuple[str, TrainResult]] = field(default_factory=list)


@dataclass
class _State:
    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    last_eval_step: int | None = None
    evals_without_gain: int = 0
    last_checkpoint: str | None = None


class _Trainer:
    """State and steps of one run; :func:`train` is its only user."""

    def __init__(
        self, cfg: TrainConfig, objective: Objective | None, callbacks: Sequence[Callback]
    ):
        self.cfg, self.callbacks = cfg, list(callbacks)
        self.acc = make_accelerator(cfg.train.mixed_precision)
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self.is_main = self.acc.is_main_process
        self.out = Path(cfg.output_dir)
        self.folder = RunFolder(self.out, self.is_main)
        self.signal: int | None = None
        resume = self._preflight(objective)
        self.module = self._build_module(objective)
        self.stream = self._build_stream()
        self.total = total_steps(cfg, self.stream)
        self._build_optimizer()
        if resume is None:  # everything is validated, loaded and open: only now touch outputs
            self.folder.set_aside()
        self.folder.write_config(cfg.to_dict())
        self.acc.wait_for_everyone()
        self.state = self._restore(resume) if resume is not None else self._fresh_start()
        self.metrics = MetricsWriter(
            self.out, self.is_main, cfg.logging.tensorboard, self.state.step if resume else None
        )
        self.bar = ProgressBar(self.total, self.state.step, enabled=False)  # replaced in run()
        self.dropped_rows = 0
        self.compile_reported = False
        self.stopped_early = False
        self.first_eval: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.last_train: dict[str, Any] = {}

    # --------------------------------------------------------------- setting up
    def _preflight(self, objective: Objective | None) -> Path | None:
        """Every check that needs no model: config, objective/data fit, output folder, data."""
        cfg = self.cfg
        if objective is None:
            cfg.validate(self.world)
        else:
            cfg._validate_numbers(self.world)
            cfg.data.check()
            check_custom_objective(cfg, objective)
        self.folder.recover()  # what a killed run left half done
        self.acc.wait_for_everyone()
        resume = ckpt.resolve_resume(cfg.resume_from, self.out)
        self.folder.check(cfg.overwrite_output_dir, resuming=resume is not None)
        if cfg.eval.every_steps or cfg.eval.at_end or cfg.eval.at_start:
            from contrasent.eval.sts import resolve_data_dir

            resolve_data_dir(cfg.eval.data_dir)  # a missing STS folder fails now, not later
        return resume

    def _build_module(self, objective: Objective | None) -> TrainModule:
        from accelerate.utils import set_seed

        from contrasent.encoder import Encoder
        from contrasent.objectives import build_objective

        m = self.cfg.model
        set_seed(self.cfg.train.seed)  # same head initialisation on every process
        encoder = Encoder.from_pretrained(
            m.name_or_path,
            pooling=m.pooling,
            normalize=m.normalize,
            max_seq_length=m.max_seq_length,
            device=self.acc.device,  # this process's device (heads are built beside the encoder)
        )
        encoder.length_buckets = self.cfg.train.length_buckets
        self.compiled = self.cfg.train.compile and compile_encoder(encoder)
        if objective is None:
            objective = build_objective(
                self.cfg.objective_name, encoder, **self.cfg.objective_options
            )
        else:
            objective.setup(encoder)
        return TrainModule(encoder, objective, self.cfg.data.max_seq_length)

    def _build_stream(self) -> Any:
        from contrasent.data.sources import build_stream

        t = self.cfg.train
        return build_stream(self.cfg.data, t.batch_size, t.seed, self.module.encoder.tokenizer)

    def _build_optimizer(self) -> None:
        t = self.cfg.train
        self.optimizer = build_optimizer(self.module, t.lr, t.weight_decay)
        warm = warmup_steps(self.total, t.warmup_steps, t.warmup_ratio)
        self.scheduler = build_scheduler(self.optimizer, t.lr_schedule, warm, self.total)
        self.model, self.optimizer = self.acc.prepare(self.module, self.optimizer)

    def _fresh_start(self) -> _State:
        from accelerate.utils import set_seed

        set_seed(self.cfg.train.seed, device_specific=True)  # each process its own dropout
        return _State()

    def _restore(self, resume: Path) -> _State:
        saved, rng_restored = ckpt.load_checkpoint(
            resume,
            rank=self.rank,
            trainable=self.module,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            stream=self.stream,
            scaler=self.acc.scaler,
        )
        known = {f.name for f in dataclasses.fields(_State)}
        state = _State(**{k: v for k, v in saved.items() if k in known})
        state.last_checkpoint = str(resume)
        if not rng_restored:  # resumed on more processes than saved
            reseed_missing_rank(self.cfg.train.seed, self.rank, state.step)
        log.info("resumed from %s at step %d", resume, state.step)
        return state

    # --------------------------------------------------------------- one step
    def _check_loss(self, losses: dict[str, torch.Tensor], step: int) -> None:
        loss = losses["loss"].detach()
        bad = (~torch.isfinite(loss)).float().reshape(1)
        if self.world > 1:  # every process must stop together
            bad = self.acc.reduce(bad, reduction="sum")
        if bad.item() > 0:
            where = self.state.last_checkpoint or "none written yet"
            self.metrics.write({"step": step, "kind": "diverged", "loss": float(loss)})
            raise TrainingDiverged(
                f"training diverged: the loss is {float(loss)} at step {step} (no update was "
                f"made with it). Last good checkpoint: {where}. Lower train.lr, keep "
                "train.grad_clip on, or try mixed_precision: no/bf16, then resume_from: latest"
            )

    def _forward_backward(self, batch: Any, sync: bool, step: int) -> dict[str, torch.Tensor]:
        acc, t = self.acc, self.cfg.train
        local, dropped = local_slice(batch, self.rank, self.world)
        self.dropped_rows += dropped
        scale = 1.0 / t.grad_accum
        if t.mini_batch_size:
            # every pass without DDP's hooks, then one explicit average (see gradcache.py)
            with acc.no_sync(self.model):
                record = gradcache_step(
                    self.module.encoder,
                    self.module.objective,
                    local,
                    t.mini_batch_size,
                    max_length=self.module.max_length,
                    backward=acc.backward,
                    loss_scale=scale,
                    autocast=acc.autocast,
                    check_loss=lambda r: self._check_loss(r, step),
                )
            if sync:
                average_gradients(self.module.parameters())
            return record
        with contextlib.nullcontext() if sync else acc.no_sync(self.model):
            with acc.autocast():
                record = self.model(local)
            self._check_loss(record, step)
            acc.backward(record["loss"] * scale)
        return {k: v.detach() for k, v in record.items()}

    def _step(self, step: int) -> tuple[dict[str, torch.Tensor], float | None, int, float]:
        t = self.cfg.train
        parts: dict[str, torch.Tensor] = {}
        rows = 0
        for micro in range(t.grad_accum):
            batch = next(self.stream)  # StopIteration: the data is exhausted
            rows += len(batch)
            out = self._forward_backward(batch, sync=micro == t.grad_accum - 1, step=step)
            for k, v in out.items():
                if v.numel() == 1:
                    parts[k] = parts.get(k, 0.0) + v.float() / t.grad_accum
        grad_norm = None
        if t.grad_clip > 0:
            grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), t.grad_clip))
        lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
        self.optimizer.step()
        if not self.acc.optimizer_step_was_skipped:  # fp16 overflow: the step did not happen
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return parts, grad_norm, rows, lr

    # --------------------------------------------------------------- eval / save
    def evaluate(self, step: int) -> None:
        """STS on the main process; the others wait. Saves ``best/`` on improvement and counts
        evaluations without one for ``eval.patience`` (the decision is shared by all)."""
        e = self.cfg.eval
        improved = torch.zeros(1, device=self.acc.device)
        if self.is_main:
            results = run_sts(self.module, e)
            value = metric_value(results, e.metric, e.mode)
            if value is not None and (
                self.state.best_metric is None or value > self.state.best_metric
            ):
                improved += 1
                self.state.best_metric, self.state.best_step = value, step
                if e.keep_best:
                    self._save_encoder("best")
            record = eval_record(
                step, results, e, value, self.state.best_metric, self.state.best_step
            )
            self.metrics.write(record)
            self.last_eval = record
            self.bar.write(
                f"step {step}: {e.metric}={fmt(value)} (best {fmt(self.state.best_metric)} "
                f"at step {self.state.best_step})"
            )
        if self.world > 1:
            improved = self.acc.reduce(improved, reduction="sum")
        self.state.evals_without_gain = 0 if improved.item() else self.state.evals_without_gain + 1
        self.state.last_eval_step = step
        self.acc.wait_for_everyone()

    def _save_encoder(self, name: str) -> Path:
        target = self.out / name
        self.module.encoder.save(target)  # atomic: temp folder, then rename
        return target

    def _save_final(self) -> Path:
        """``final/``; hard links to ``best/`` when they hold the same weights (no second copy)."""
        target = self.out / "final"
        best = self.out / "best"
        if self.state.best_step == self.state.step and best.is_dir():
            from contrasent.st_layout import link_model

            link_model(best, target)
            log.info("final/ holds the weights of best/ (step %d): hard-linked", self.state.step)
        else:
            self._save_encoder("final")
        self.folder.commit()
        return target

    def _write_card(self, folder: Path) -> None:
        """``final/README.md`` with the run: recipe, steps, this session's time, STS before and
        after (a hard-linked ``best/`` keeps its own card: the card is replaced, not edited)."""
        from contrasent.model_card import run_card_info, write_model_card

        info = run_card_info(
            self.cfg.to_dict(),
            steps=self.state.step,
            time_s=time.perf_counter() - self.started,
            sts_before=(self.first_eval or {}).get("results"),
            sts=(self.last_eval or {}).get("results"),
        )
        encoder = self.module.encoder
        write_model_card(folder, {"model_name": str(folder), **encoder.card_info(), **info})

    def save_checkpoint(self, step: int) -> None:
        state = dataclasses.asdict(self.state)
        state.pop("last_checkpoint")
        state["world_size"] = self.world  # informative: resuming on another count is allowed
        path = ckpt.save_checkpoint(
            self.out,
            step,
            rank=self.rank,
            is_main=self.is_main,
            barrier=self.acc.wait_for_everyone,
            trainable=self.module,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            stream=self.stream,
            trainer_state=state,
            scaler=self.acc.scaler,
            keep_last=self.cfg.checkpoint.keep_last,
        )
        self.state.last_checkpoint = str(path)
        if self.is_main:
            self.folder.commit()

    # --------------------------------------------------------------- run
    def run(self) -> TrainResult:
        cfg = self.cfg
        self.bar = ProgressBar(
            self.total, self.state.step, self.is_main and cfg.logging.progress_bar
        )
        self.window = _Window()
        self.started = time.perf_counter()
        self.model.train()
        try:
            with _StopSignals(self):
                if cfg.eval.at_start and self.state.step == 0:
                    self.evaluate(0)
                    self.first_eval = self.last_eval
                    self.model.train()
                while self.state.step < self.total:
                    if self._one_step():
                        break
                    self._stop_if_signalled()
                return self._finish()
        except BaseException:
            if self.is_main:
                self.folder.rollback()  # no-op once the run has a checkpoint or a model
            raise
        finally:
            self.bar.close()
            self.metrics.close()

    def _stop_if_signalled(self) -> None:
        """After a step: on SIGINT/SIGTERM (on any process) checkpoint and stop, all together."""
        flag = torch.tensor([float(self.signal or 0)], device=self.acc.device)
        if self.world > 1:
            flag = self.acc.reduce(flag, reduction="max")
        if not flag.item():
            return
        signum, step = int(flag.item()), self.state.step
        last = self.state.last_checkpoint
        if not (last and Path(last).name == ckpt.checkpoint_name(step)):
            self.save_checkpoint(step)
        self.metrics.write({"step": step, "kind": "interrupted", "signal": signum})
        name = signal.Signals(signum).name
        raise TrainingInterrupted(
            f"{name}: stopped after step {step} of {self.total}; checkpoint "
            f"{self.state.last_checkpoint}. Resume with resume_from: latest",
            signum,
            step,
            Path(self.state.last_checkpoint),
        )

    def _one_step(self) -> bool:
        """Train, log, evaluate and checkpoint one step; True when the run should end now."""
        cfg, step = self.cfg, self.state.step + 1
        t0 = time.perf_counter()
        try:
            parts, grad_norm, rows, lr = self._step(step)
        except StopIteration:
            log.warning("the data ran out after %d steps (of %d)", self.state.step, self.total)
            return True
        self.state.step = step
        if self.compiled and not self.compile_reported:  # the first step compiles
            self._report_compile(step, time.perf_counter() - t0)
        loss = float(parts["loss"])
        self.bar.update(loss, lr, rows / max(time.perf_counter() - t0, 1e-9))
        self.window.add(parts, rows)
        record: dict[str, Any] = {"step": step, "loss": loss, "lr": lr}
        if step % cfg.logging.log_every == 0 or step == self.total:
            record = self._train_record(step, lr, grad_norm)
        if cfg.eval.every_steps and step % cfg.eval.every_steps == 0:
            self.evaluate(step)
        if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
            self.save_checkpoint(step)
        if cfg.eval.patience and self.state.evals_without_gain >= cfg.eval.patience:
            self.bar.write(
                f"early stop at step {step}: {cfg.eval.patience} evaluations without a new "
                f"best {cfg.eval.metric} (best {fmt(self.state.best_metric)} at step "
                f"{self.state.best_step})"
            )
            self.stopped_early = True
            return True
        if any([bool(cb(step, record)) for cb in self.callbacks]):
            log.info("a callback stopped training at step %d", step)
            return True
        return False

    def _report_compile(self, step: int, seconds: float) -> None:
        self.compile_reported = True
        self.metrics.write({"step": step, "kind": "compile", "first_step_s": seconds})
        self.bar.write(f"train.compile: step {step} took {seconds:.1f} s (compiling included)")

    def _train_record(self, step: int, lr: float, grad_norm: float | None) -> dict[str, Any]:
        w = self.window
        names = sorted(w.sums)
        values = torch.stack([torch.as_tensor(w.sums[k], dtype=torch.float32) for k in names])
        values = self.acc.reduce(values.to(self.acc.device), reduction="mean") / w.steps
        record: dict[str, Any] = {"step": step, "kind": "train"}
        record.update({k: float(v) for k, v in zip(names, values.tolist(), strict=True)})
        record.update(lr=lr, grad_norm=grad_norm)
        record["sentences_per_s"] = w.rows / max(time.perf_counter() - w.start, 1e-9)
        per_epoch = getattr(self.stream, "steps_per_epoch", None)
        if per_epoch:
            record["epoch"] = step * self.cfg.train.grad_accum / per_epoch
        if self.dropped_rows:
            record["dropped_rows"] = self.dropped_rows
        self.metrics.write(record)
        self.last_train = record
        self.window = _Window()
        return record

    def _finish(self) -> TrainResult:
        cfg, step = self.cfg, self.state.step
        if cfg.eval.at_end and self.state.last_eval_step != step and step > 0:
            self.evaluate(step)
        last = self.state.last_checkpoint
        if (
            cfg.checkpoint.every_steps
            and step > 0
            and not (last and Path(last).name == ckpt.checkpoint_name(step))
        ):
            self.save_checkpoint(step)
        final = self._save_final() if self.is_main else self.out / "final"
        if self.is_main:
            self._write_card(final)
        self.acc.wait_for_everyone()
        best = self.out / "best"
        return TrainResult(
            output_dir=self.out,
            final_dir=final,
            best_dir=best if best.is_dir() else None,
            steps=step,
            best_metric=self.state.best_metric,
            best_step=self.state.best_step,
            first_eval=self.first_eval,
            last_eval=self.last_eval,
            last_train=self.last_train,
            last_checkpoint=Path(self.state.last_checkpoint)
            if self.state.last_checkpoint
            else None,
            stopped_early=self.stopped_early,
        )


class _StopSignals:
    """SIGINT and SIGTERM (what Slurm and Kubernetes send before pre-emption) ask the run to stop
    after the current step with a checkpoint; a second SIGINT stops at once. Installed on the
    main thread only (elsewhere Python cannot install handlers); the old handlers come back."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer: _Trainer) -> None:
        self.trainer = trainer
        self.saved: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.trainer.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        self.trainer.signal = signum
        self.trainer.bar.write(
            f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
            "(Ctrl-C again to stop at once)"
        )

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.saved.items():
            signal.signal(s, handler)


class _Window:
    """Sums of the logged numbers since the last training record."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.rows = 0
        self.start = time.perf_counter()

    def add(self, parts: dict[str, Any], rows: int) -> None:
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.rows += rows


def train(
    config: TrainConfig | dict[str, Any],
    *,
    objective: Objective | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train an encoder as ``config`` says; returns where the models went and the best metric.

    Args:
        config: a :class:`TrainConfig` (or the same as nested mappings / a jsonargparse
            Namespace). With ``stages``, the stages run in sequence (:mod:`.stages`).
        objective: use this objective module instead of building ``config.objective`` (custom
            objectives from Python; its ``setup(encoder)`` is called here; pass an equal one
            again to resume). Not with ``stages``.
        callbacks: ``cb(step, record)`` after every optimizer step, on every process (after
            evaluation and checkpointing of that step); returning True ends training early (the
            end-of-training evaluation and ``final/`` still happen). ``record`` holds ``loss``
            and ``lr``, plus the averaged numbers on logging steps.

    Raises:
        UserError: a bad setting or input (message names it); :class:`TrainingDiverged` when the
            loss stops being finite.
    """
    cfg = as_train_config(config)
    if cfg.stages:
        if objective is not None:
            raise UserError("a staged recipe builds each stage's objective: objective= is unused")
        from contrasent.train.stages import run_stages

        return run_stages(cfg, lambda c: _Trainer(c, None, callbacks).run())
    return _Trainer(cfg, objective, callbacks).run()
