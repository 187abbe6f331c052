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
* AdamW (no decay on biases/LayerNorm; optionally without bias correction), linear warm-up/decay
  (or constant, slanted triangular), gradient clipping, fp16/bf16 autocast
  (similarity logits and losses always in float32);
* STS evaluation every ``eval.every_steps`` (and at each epoch's end: ``eval.at_epoch_end``) and
  at the end, at the encoder's inference length (never the training truncation), with the
  objective's loss on held-out data when ``data.validation`` is set
  (:mod:`contrasent.train.validation`); the best model by ``eval.metric`` is saved to
  ``output_dir/best``, the last to ``output_dir/final`` (sentence-transformers folders holding the
  encoder only); optional early stopping after ``eval.patience`` evaluations without a new best;
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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from contrasent.core.distributed import OneFailsAll, average_gradients
from contrasent.core.errors import UserError
from contrasent.core.hardware import say_machine
from contrasent.core.launch import launched_rank
from contrasent.core.runlock import RunLock
from contrasent.objectives.base import Objective
from contrasent.train import checkpoint as ckpt
from contrasent.train.batching import local_slice
from contrasent.train.config import TrainConfig, as_train_config
from contrasent.train.gradcache import gradcache_step
from contrasent.train.metrics import MetricsWriter, ProgressBar, Window, train_record
from contrasent.train.optim import optimizer_and_scheduler
from contrasent.train.outputs import RunFolder
from contrasent.train.result import (
    Callback,
    RunState,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
)
from contrasent.train.runtime import (
    TrainModule,
    build_module,
    check_finite,
    ends_epoch,
    epoch_batches,
    keep_dropout,
    make_accelerator,
    preflight,
    restore_run,
    total_steps,
    warn_if_no_room,
)
from contrasent.train.selection import Selection
from contrasent.train.signals import StopSignals, stop_if_signalled
from contrasent.train.validation import ValidationSet, validation_for_run

log = logging.getLogger(__name__)

__all__ = ["TrainModule", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "train"]


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
        resume, plan = preflight(cfg, objective, self.world, self.folder, self.acc)
        say_machine()  # checked: the run starts (a mistake above stays one line)
        self.module = self._build_module(objective)
        self.stream = self._build_stream()
        validation = self._build_validation()
        self.total = total_steps(cfg, self.stream)
        self.epoch_batches = epoch_batches(cfg, self.stream)  # eval.at_epoch_end
        self._build_optimizer()
        if self.is_main:
            warn_if_no_room(cfg, self.module, self.optimizer)
        if resume is None:  # everything is validated, loaded and open: only now touch outputs
            self.folder.set_aside()
        self.folder.write_config(cfg.to_dict())
        self.acc.wait_for_everyone()
        if resume is not None:
            self.state = restore_run(resume, self.rank, self.cfg.train.seed, self._resumable())
            keep_dropout(self.module, self.state.fast_dropout)
        else:
            self.state = self._fresh_start()
        self.metrics = MetricsWriter(
            self.out, self.is_main, cfg.logging.tensorboard, self.state.step if resume else None
        )
        self.bar = ProgressBar(self.total, self.state.step, enabled=False)  # replaced in run()
        self.dropped_rows = 0
        self.compile_reported = False
        self.stopped_early = False
        self.selection = Selection(cfg, self.folder, self.acc, self.state, plan, validation)
        self.last_train: dict[str, Any] = {}

    # --------------------------------------------------------------- setting up
    def _build_module(self, objective: Objective | None) -> TrainModule:
        module, self.compiled = build_module(self.cfg, self.acc.device, objective)
        return module

    def _build_stream(self) -> Any:
        from contrasent.data.registry import build_stream

        t = self.cfg.train
        return build_stream(self.cfg.data, t.batch_size, t.seed, self.module.encoder.tokenizer)

    def _build_validation(self) -> ValidationSet | None:
        """The held-out batches of ``data.validation`` (main process: it alone evaluates)."""
        if not self.is_main:
            return None
        return validation_for_run(self.cfg, self.stream, self.module.encoder.tokenizer, self.world)

    def _build_optimizer(self) -> None:
        self.optimizer, self.scheduler = optimizer_and_scheduler(
            self.module, self.cfg.train, self.total
        )
        self.model, self.optimizer = self.acc.prepare(self.module, self.optimizer)

    def _resumable(self) -> dict[str, Any]:
        """What a checkpoint restores: every stateful part of the run."""
        return {
            "trainable": self.module,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "stream": self.stream,
            "scaler": self.acc.scaler,
        }

    def _fresh_start(self) -> RunState:
        from accelerate.utils import set_seed

        set_seed(self.cfg.train.seed, device_specific=True)  # each process its own dropout
        return RunState(fast_dropout=self.cfg.train.fast_dropout)

    # --------------------------------------------------------------- one step
    def _check_loss(self, losses: dict[str, torch.Tensor], step: int) -> None:
        where = self.state.last_checkpoint or "none written yet"
        check_finite(losses["loss"], step, self.acc, where, self.metrics.write)

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

    def evaluate(self, step: int) -> None:
        self.selection.evaluate(self.module, step, self.metrics.write, self.bar.write)

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
        self.window = Window()
        self.selection.started = time.perf_counter()
        self.model.train()
        try:
            with StopSignals(self):
                if cfg.eval.at_start and self.state.step == 0:
                    self.evaluate(0)
                    self.selection.first_eval = self.selection.last_eval
                    self.model.train()
                while self.state.step < self.total:
                    if self._one_step():
                        break
                    stop_if_signalled(self)
                return self._finish()
        except BaseException:
            if self.is_main:
                self.folder.rollback()  # no-op once the run has a checkpoint or a model
            raise
        finally:
            self.bar.close()
            self.metrics.close()

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
        epoch_end = self.epoch_batches and ends_epoch(
            step, self.epoch_batches, cfg.train.grad_accum
        )
        if (cfg.eval.every_steps and step % cfg.eval.every_steps == 0) or epoch_end:
            self.evaluate(step)
        if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
            self.save_checkpoint(step)
        early_stop = self.selection.out_of_patience()
        if early_stop:
            self.bar.write(early_stop)
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
        record = train_record(
            self.window,
            step,
            lr,
            grad_norm,
            lambda v: self.acc.reduce(v.to(self.acc.device), reduction="mean"),
        )
        per_epoch = getattr(self.stream, "steps_per_epoch", None)
        if per_epoch:
            record["epoch"] = step * self.cfg.train.grad_accum / per_epoch
        if self.dropped_rows:
            record["dropped_rows"] = self.dropped_rows
        self.metrics.write(record)
        self.last_train = record
        self.window = Window()
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
        final = self.selection.save_final(self.module) if self.is_main else self.out / "final"
        if self.is_main:
            self.selection.write_card(self.module, final)
        self.acc.wait_for_everyone()
        best = self.out / "best"
        return TrainResult(
            output_dir=self.out,
            final_dir=final,
            best_dir=best if best.is_dir() else None,
            steps=step,
            best_metric=self.state.best_metric,
            best_step=self.state.best_step,
            first_eval=self.selection.first_eval,
            last_eval=self.selection.last_eval,
            last_train=self.last_train,
            last_checkpoint=Path(self.state.last_checkpoint)
            if self.state.last_checkpoint
            else None,
            stopped_early=self.stopped_early,
        )


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
    if cfg.stages and objective is not None:
        raise UserError("a staged recipe builds each stage's objective: objective= is unused")
    # one run per folder: a second one is refused (the ranks of one launched job share it);
    # an error on one process ends them all with its message (not a hang in a collective)
    together = (TrainingInterrupted, TrainingDiverged)
    with (
        RunLock(cfg.output_dir, "contrasent train", is_main=launched_rank() == 0),
        OneFailsAll("contrasent train", together),
    ):
        if cfg.stages:
            from contrasent.train.stages import run_stages

            return run_stages(cfg, lambda c: _Trainer(c, None, callbacks).run())
        return _Trainer(cfg, objective, callbacks).run()
