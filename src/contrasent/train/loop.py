"""The training loop: one for every method, built on ``accelerate``.

The same code runs on CPU, one GPU, several GPUs or nodes: start it with ``python``,
``accelerate launch`` or ``torchrun``. Per optimizer step:

* the data stream yields GLOBAL batches of ``train.batch_size`` rows (the in-batch candidates);
  every process takes its contiguous equal slice, and the objective gathers the embeddings of all
  slices, so each row is contrasted with the whole global batch whatever the number of processes;
* ``train.grad_accum`` batches are summed per step. Gradient accumulation does NOT add negatives:
  each batch is still contrasted only within itself, so ``batch_size=64, grad_accum=4`` trains with
  63 negatives per row, not 255. For a large batch of negatives under a memory limit use the
  gradient cache (``train.mini_batch_size``, :mod:`contrasent.train.gradcache`): the loss sees the
  whole batch while the encoder runs on ``mini_batch_size`` texts at a time;
* AdamW (no decay on biases/LayerNorm), linear warm-up/decay, gradient clipping, fp16/bf16 autocast;
* STS evaluation every ``eval.every_steps`` and at the end; the best model by ``eval.metric`` is
  saved to ``output_dir/best``, the last to ``output_dir/final`` (sentence-transformers folders
  holding the encoder only: training heads are never saved there);
* checkpoints (:mod:`contrasent.train.checkpoint`) every ``checkpoint.every_steps`` resume exactly;
* a non-finite loss stops the run with :class:`TrainingDiverged`, before the bad gradients touch
  the weights; the checkpoints written so far are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrasent.errors import UserError
from contrasent.objectives.base import InBatchObjective, Objective
from contrasent.train import checkpoint as ckpt
from contrasent.train.batching import local_slice
from contrasent.train.config import TrainConfig, as_train_config
from contrasent.train.evaluation import eval_record, fmt, metric_value, run_sts
from contrasent.train.gradcache import gradcache_step
from contrasent.train.metrics import MetricsWriter, ProgressBar
from contrasent.train.optim import build_optimizer, build_scheduler, warmup_steps
from contrasent.train.setup import (
    build_objective_from,
    make_accelerator,
    prepare_output_dir,
    total_steps,
)

log = logging.getLogger(__name__)

#: callback(step, record) after every optimizer step (all processes); True asks to stop
Callback = Callable[[int, dict[str, Any]], "bool | None"]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stopped before updating the weights with it."""


class TrainModule(nn.Module):
    """Encoder + objective as one module: what ``accelerator.prepare`` (DDP) wraps.

    ``forward(batch)`` is the objective's loss dict; ``forward(features=f)`` is
    ``objective.embed(encoder, f)`` (the gradient cache's re-encoding goes through the wrapper
    so DDP sees the forward whose backward it synchronises).
    """

    def __init__(self, encoder: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.encoder = encoder
        self.objective = objective

    def forward(self, batch: Any = None, *, features: dict | None = None) -> Any:
        if features is not None:
            return self.objective.embed(self.encoder, features)
        return self.objective(self.encoder, batch)


@dataclass
class TrainResult:
    """What a run produced."""

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


@dataclass
class _State:
    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    last_eval_step: int | None = None
    last_checkpoint: str | None = None


# ----------------------------------------------------------------------------- the loop


class _Trainer:
    """State and steps of one run; :func:`train` is its only user."""

    def __init__(
        self, cfg: TrainConfig, objective: Objective | None, callbacks: Sequence[Callback]
    ):
        from accelerate.utils import set_seed

        from contrasent.data.sources import build_stream
        from contrasent.encoder import Encoder

        self.cfg, self.callbacks = cfg, list(callbacks)
        self.acc = acc = make_accelerator(cfg.train.mixed_precision)
        self.world, self.rank, self.is_main = (
            acc.num_processes,
            acc.process_index,
            acc.is_main_process,
        )
        cfg.validate(self.world)
        self.out = Path(cfg.output_dir)
        resume = ckpt.resolve_resume(cfg.resume_from, self.out)
        prepare_output_dir(cfg, self.out, resume, self.is_main)
        acc.wait_for_everyone()
        if (
            cfg.eval.every_steps or cfg.eval.at_end or cfg.eval.at_start
        ):  # a missing STS folder fails now, not later
            from contrasent.eval.sts import resolve_data_dir

            resolve_data_dir(cfg.eval.data_dir)

        set_seed(cfg.train.seed)  # same head initialisation on every process
        m = cfg.model
        encoder = Encoder.from_pretrained(
            m.name_or_path,
            pooling=m.pooling,
            normalize=m.normalize,
            max_seq_length=m.max_seq_length,
            device=acc.device,  # this process's device (heads are built beside the encoder)
        )
        if objective is None:
            objective = build_objective_from(cfg, encoder)
        elif hasattr(objective, "setup"):  # its heads need the encoder built here
            objective.setup(encoder)
        if cfg.train.mini_batch_size and not isinstance(objective, InBatchObjective):
            raise UserError(
                f"train.mini_batch_size (gradient cache) needs an in-batch objective; "
                f"{type(objective).__name__} is not one: set train.mini_batch_size: 0"
            )
        self.module = TrainModule(encoder, objective)
        self.stream = build_stream(cfg.data, cfg.train.batch_size, cfg.train.seed)
        self.total = total_steps(cfg, self.stream)
        t = cfg.train
        self.optimizer = build_optimizer(self.module, t.lr, t.weight_decay)
        warm = warmup_steps(self.total, t.warmup_steps, t.warmup_ratio)
        self.scheduler = build_scheduler(self.optimizer, t.lr_schedule, warm, self.total)
        self.model, self.optimizer = acc.prepare(self.module, self.optimizer)
        self.state = _State()
        if resume is not None:
            saved = ckpt.load_checkpoint(
                resume,
                rank=self.rank,
                trainable=self.module,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                stream=self.stream,
                scaler=acc.scaler,
            )
            known = {f.name for f in dataclasses.fields(_State)}
            self.state = _State(**{k: v for k, v in saved.items() if k in known})
            self.state.last_checkpoint = str(resume)
            log.info("resumed from %s at step %d", resume, self.state.step)
        else:
            set_seed(t.seed, device_specific=True)  # each process its own dropout stream
        self.metrics = MetricsWriter(
            self.out, self.is_main, cfg.logging.tensorboard, self.state.step if resume else None
        )
        self.bar = ProgressBar(self.total, self.state.step, enabled=False)  # replaced in run()
        self.dropped_rows = 0
        self.first_eval: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.last_train: dict[str, Any] = {}

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
        check = partial(self._check_loss, step=step)
        if t.mini_batch_size:
            return gradcache_step(
                self.model,
                self.module.encoder,
                self.module.objective,
                local,
                t.mini_batch_size,
                backward=acc.backward,
                loss_scale=scale,
                no_sync=partial(acc.no_sync, self.model),
                sync=sync,
                autocast=acc.autocast,
                check_loss=check,
            )
        with contextlib.nullcontext() if sync else acc.no_sync(self.model):
            with acc.autocast():
                losses = self.model(local)
            check(losses)
            acc.backward(losses["loss"] * scale)
        return {k: v.detach() for k, v in losses.items()}

    def _next_batch(self) -> Any:
        return next(self.stream)  # StopIteration: the data is exhausted

    def _step(self, step: int) -> tuple[dict[str, torch.Tensor], float | None, int, float]:
        t = self.cfg.train
        parts: dict[str, torch.Tensor] = {}
        rows = 0
        for micro in range(t.grad_accum):
            batch = self._next_batch()
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
        """STS on the main process; the others wait. Saves ``best/`` on improvement."""
        e = self.cfg.eval
        if self.is_main:
            results = run_sts(self.module, e)
            value = metric_value(results, e.metric, e.mode)
            improved = value is not None and (
                self.state.best_metric is None or value > self.state.best_metric
            )
            if improved:
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
        self.state.last_eval_step = step
        self.acc.wait_for_everyone()

    def _save_encoder(self, name: str) -> Path:
        target = self.out / name
        self.module.encoder.save(target)  # atomic: temp folder, then rename
        return target

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

    # --------------------------------------------------------------- run

    def run(self) -> TrainResult:
        cfg = self.cfg
        every_eval, every_ckpt = cfg.eval.every_steps, cfg.checkpoint.every_steps
        self.bar = ProgressBar(
            self.total, self.state.step, self.is_main and cfg.logging.progress_bar
        )
        window: dict[str, float] = {}
        n_window, rows_window, t_window = 0, 0, time.perf_counter()
        self.model.train()
        try:
            if cfg.eval.at_start and self.state.step == 0:
                self.evaluate(0)
                self.first_eval = self.last_eval
                self.model.train()
            while self.state.step < self.total:
                step = self.state.step + 1
                t0 = time.perf_counter()
                try:
                    parts, grad_norm, rows, lr = self._step(step)
                except StopIteration:
                    log.warning(
                        "the data ran out after %d steps (of %d)", self.state.step, self.total
                    )
                    break
                self.state.step = step
                loss = float(parts["loss"])
                speed = rows / max(time.perf_counter() - t0, 1e-9)
                self.bar.update(loss, lr, speed)
                for k, v in parts.items():
                    window[k] = window.get(k, 0.0) + v
                n_window += 1
                rows_window += rows
                record: dict[str, Any] = {"step": step, "loss": loss, "lr": lr}
                if step % cfg.logging.log_every == 0 or step == self.total:
                    record = self._train_record(
                        step, window, n_window, rows_window, t_window, lr, grad_norm
                    )
                    window, n_window, rows_window, t_window = {}, 0, 0, time.perf_counter()
                if every_eval and step % every_eval == 0:
                    self.evaluate(step)
                if every_ckpt and step % every_ckpt == 0:
                    self.save_checkpoint(step)
                stop = any([bool(cb(step, record)) for cb in self.callbacks])
                if stop:
                    log.info("a callback stopped training at step %d", step)
                    break
            return self._finish()
        finally:
            self.bar.close()
            self.metrics.close()

    def _train_record(self, step, window, n, rows, t_start, lr, grad_norm) -> dict[str, Any]:
        names = sorted(window)
        values = torch.stack([torch.as_tensor(window[k], dtype=torch.float32) for k in names])
        values = self.acc.reduce(values.to(self.acc.device), reduction="mean") / n
        record: dict[str, Any] = {"step": step, "kind": "train"}
        record.update({k: float(v) for k, v in zip(names, values.tolist(), strict=True)})
        record.update(lr=lr, grad_norm=grad_norm)
        record["sentences_per_s"] = rows / max(time.perf_counter() - t_start, 1e-9)
        per_epoch = getattr(self.stream, "steps_per_epoch", None)
        if per_epoch:
            record["epoch"] = step * self.cfg.train.grad_accum / per_epoch
        if self.dropped_rows:
            record["dropped_rows"] = self.dropped_rows
        self.metrics.write(record)
        self.last_train = record
        return record

    def _finish(self) -> TrainResult:
        cfg, step = self.cfg, self.state.step
        if cfg.eval.at_end and self.state.last_eval_step != step and step > 0:
            self.evaluate(step)
        if (
            cfg.checkpoint.every_steps
            and step > 0
            and not (
                self.state.last_checkpoint
                and Path(self.state.last_checkpoint).name == ckpt.checkpoint_name(step)
            )
        ):
            self.save_checkpoint(step)
        final = self._save_encoder("final") if self.is_main else self.out / "final"
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
            Namespace).
        objective: use this objective module instead of building ``config.objective`` (custom
            objectives from Python; its ``setup(encoder)``, if any, is called here; pass an
            equal one again to resume).
        callbacks: ``cb(step, record)`` after every optimizer step, on every process (after
            evaluation and checkpointing of that step); returning True ends training early (the
            end-of-training evaluation and ``final/`` still happen). ``record`` holds ``loss``
            and ``lr``, plus the averaged numbers on logging steps.

    Raises:
        UserError: a bad setting or input (message names it); :class:`TrainingDiverged` when the
            loss stops being finite.
    """
    cfg = as_train_config(config)
    return _Trainer(cfg, objective, callbacks).run()
