"""Setting a run up: the accelerator, the objective, the step count, the output folder."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrasent.core.errors import UserError
from contrasent.core.launch import launched_world, under_launcher
from contrasent.data.senteval import resolve_data_dir
from contrasent.eval.suite import Plan
from contrasent.objectives.base import Objective
from contrasent.train import checkpoint as ckpt
from contrasent.train.config import TrainConfig
from contrasent.train.result import RunState, TrainingDiverged
from contrasent.train.selection import eval_plan

log = logging.getLogger(__name__)


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


def build_module(
    cfg: TrainConfig, device: Any, objective: Objective | None
) -> tuple[TrainModule, bool]:
    """The encoder (on ``device``) and its objective as one module, and whether the encoder
    was compiled (``train.compile``). Seeded first: every process builds the same heads."""
    from accelerate.utils import set_seed

    from contrasent.model.dropout import use_fast_dropout
    from contrasent.model.encoder import Encoder
    from contrasent.objectives import build_objective

    m = cfg.model
    set_seed(cfg.train.seed)  # same head initialisation on every process
    encoder = Encoder.from_pretrained(
        m.name_or_path,
        pooling=m.pooling,
        normalize=m.normalize,
        max_seq_length=m.max_seq_length,
        device=device,  # this process's device (heads are built beside the encoder)
    )
    if m.keep_layers:  # a student from the model's own layers (before heads see its sizes)
        from contrasent.model.prune import keep_layers

        keep_layers(encoder.model, m.keep_layers)
    encoder.length_buckets = cfg.train.length_buckets
    if cfg.train.fast_dropout:  # before compiling: the graph sees the modules it runs
        use_fast_dropout(encoder)
    compiled = cfg.train.compile and compile_encoder(encoder)
    if objective is None:
        objective = build_objective(cfg.objective_name, encoder, **cfg.objective_options)
    else:
        objective.setup(encoder)
    if cfg.train.fast_dropout:  # the objective's heads' dropout (the encoder's: above)
        use_fast_dropout(objective)
    return TrainModule(encoder, objective, cfg.data.max_seq_length), compiled


def make_accelerator(mixed_precision: str):
    """The run's ``Accelerator``: DDP with unused-parameter detection, our own scheduler
    stepping, CPU multi-process support, and precision checked against the device."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    # Launched as several processes (torchrun / accelerate launch) on a machine without CUDA:
    # accelerate only sets up gloo for CPU when asked, and would otherwise run every process as
    # a lone "main" process (all writing the same files) beside an initialised process group.
    launched = launched_world()
    cpu = launched > 1 and not torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = training_precision(mixed_precision)
        log.info("train.mixed_precision auto: %s", mixed_precision)
    # BERT's pooler (and any head unused by an objective) gets no gradient: DDP must look for it.
    kwargs = dict(
        cpu=cpu,
        mixed_precision=mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        step_scheduler_with_optimizer=False,  # our schedule counts global optimizer steps
    )
    try:
        accelerator = Accelerator(**kwargs)
    except ValueError as err:
        # accelerate keeps one precision per process; a second in-process run (notebook, tests)
        # with another precision must reset that state. Not possible under a launcher.
        if "already been initialized" not in str(err) or AcceleratorState().num_processes > 1:
            raise
        AcceleratorState._reset_state()
        accelerator = Accelerator(**kwargs)
    if under_launcher() and accelerator.num_processes != launched:
        raise UserError(
            f"{launched} processes were launched (WORLD_SIZE) but accelerate runs "
            f"{accelerator.num_processes}: check the launcher and its accelerate config"
        )
    device = accelerator.device
    if mixed_precision == "fp16" and device.type != "cuda":
        raise UserError(
            f"train.mixed_precision: fp16 needs a CUDA device (running on {device}); use bf16 or no"
        )
    if mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("train.mixed_precision: this GPU has no bf16 support; use fp16 or no")
    return accelerator


def training_precision(mixed_precision: str) -> str:
    """``train.mixed_precision`` resolved: ``auto`` = bf16 on a GPU that has it, fp16 on another
    GPU; on a CPU bf16 where it has fast bf16 matmuls (AMX, AVX512-BF16: measured 2.5x the fp32
    step on an AMD EPYC with AVX512-BF16, see the README), else ``no`` (emulated bf16 is slower
    than fp32)."""
    from contrasent.core.hardware import auto_half_precision

    if mixed_precision != "auto":
        return mixed_precision
    return auto_half_precision(torch.cuda.is_available()) or "no"


def check_custom_objective(cfg: TrainConfig, objective: Objective) -> None:
    """An objective instance passed from Python must fit the data kind and the cache setting."""
    from contrasent.data.registry import data_kind

    kind = data_kind(cfg.data.kind)
    if not issubclass(kind.batch_type, objective.batch_type):
        raise UserError(
            f"{type(objective).__name__} consumes {objective.batch_type.__name__} batches but "
            f"data.kind {cfg.data.kind!r} yields {kind.batch_type.__name__}"
        )
    if cfg.train.mini_batch_size and not objective.supports_gradient_cache:
        raise UserError(
            f"{type(objective).__name__} does not run under the gradient cache: "
            "set train.mini_batch_size: 0"
        )


def reseed_missing_rank(seed: int, rank: int, step: int) -> None:
    """Seed a process that a checkpoint has no RNG state for (a resume on more processes): from
    (seed, rank, step), so each new process gets its own stream, reproducibly."""
    from accelerate.utils import set_seed

    from contrasent.core.rng import keyed_rng

    set_seed(int(keyed_rng(seed, rank, step).integers(2**31)))


def total_steps(cfg: TrainConfig, stream: Any) -> int:
    """Optimizer steps of the run: ``train.max_steps``, else ``data.epochs`` over the stream."""
    t = cfg.train
    if t.max_steps:
        return t.max_steps
    per_epoch = getattr(stream, "steps_per_epoch", None)
    if not per_epoch:
        raise UserError(
            "the number of batches per epoch is unknown (data.scan: false, or a mixture "
            "without lines): set train.max_steps"
        )
    return max(1, math.ceil(cfg.data.epochs * per_epoch / t.grad_accum))


def epoch_batches(cfg: TrainConfig, stream: Any) -> int | None:
    """Batches per epoch for ``eval.at_epoch_end`` (None when it is off); an unknown epoch
    length is a one-line error before any step."""
    if not cfg.eval.at_epoch_end:
        return None
    per_epoch = getattr(stream, "steps_per_epoch", None)
    if not per_epoch:
        raise UserError(
            "eval.at_epoch_end: the number of batches per epoch is unknown (data.scan: false, "
            "or a mixture without lines); use eval.every_steps"
        )
    return int(per_epoch)


def ends_epoch(step: int, per_epoch: int, grad_accum: int) -> bool:
    """Whether optimizer step ``step`` (1-based, ``grad_accum`` batches each) took the last batch
    of an epoch of ``per_epoch`` batches, or went past it (an epoch that ends inside a step)."""
    return (step * grad_accum) // per_epoch > ((step - 1) * grad_accum) // per_epoch


def compile_encoder(encoder: Any) -> bool:
    """``train.compile``: compile the encoder's transformer in place (``nn.Module.compile``:
    parameter names, saving and DDP are unchanged), with dynamic shapes (every batch and length
    bucket has its own). Returns False, with a warning, where torch.compile is unavailable; a
    graph that fails to compile later runs eagerly (dynamo's ``suppress_errors``)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        log.warning("train.compile: torch.compile is not supported here; training uncompiled")
        return False
    torch._dynamo.config.suppress_errors = True
    encoder.model.compile(dynamic=True)
    return True


def preflight(
    cfg: TrainConfig, objective: Objective | None, world: int, folder: Any, acc: Any
) -> tuple[Path | None, Plan | None]:
    """Every check that needs no model: config, objective/data fit, output folder, data, the
    evaluation's task files. Returns the checkpoint to resume from (None: a fresh start) and
    the evaluation plan (None: the default STS evaluation)."""
    if objective is None:
        cfg.validate(world)
    else:
        cfg._validate_numbers(world)
        cfg.data.check()
        check_custom_objective(cfg, objective)
    folder.recover()  # what a killed run left half done
    acc.wait_for_everyone()
    resume = ckpt.resolve_resume(cfg.resume_from, Path(cfg.output_dir))
    folder.check(cfg.overwrite_output_dir, resuming=resume is not None)
    plan = None
    if cfg.eval.every_steps or cfg.eval.at_end or cfg.eval.at_start:
        plan = eval_plan(cfg.eval)  # a bad task file fails now, not after the first steps
        if plan is None or plan.sts:
            resolve_data_dir(cfg.eval.data_dir)  # a missing STS folder fails now, not later
    return resume, plan


def keep_dropout(module: nn.Module, fast: bool) -> None:
    """A resumed run keeps the dropout draw it started with (saved in its checkpoint; torch's
    before ``train.fast_dropout`` existed), whatever the config says now: the other draw would
    break the exact resume."""
    from contrasent.model.dropout import use_fast_dropout

    if use_fast_dropout(module, on=fast):
        log.info(
            "resumed run drew %s dropout masks: kept for an exact resume (train.fast_dropout is "
            "for new runs)",
            "fast" if fast else "torch's",
        )


def restore_run(resume: Path, rank: int, seed: int, parts: dict[str, Any]) -> RunState:
    """Load the checkpoint ``resume`` into ``parts`` (module, optimizer, scheduler, stream,
    scaler) and return the loop's counters saved with it."""
    saved, rng_restored = ckpt.load_checkpoint(resume, rank=rank, **parts)
    known = {f.name for f in dataclasses.fields(RunState)}
    state = RunState(**{k: v for k, v in saved.items() if k in known})
    state.last_checkpoint = str(resume)
    if not rng_restored:  # resumed on more processes than saved
        reseed_missing_rank(seed, rank, state.step)
    log.info("resumed from %s at step %d", resume, state.step)
    return state


def check_finite(loss: torch.Tensor, step: int, acc: Any, last_checkpoint: str, write: Any) -> None:
    """Stop every process together (:class:`TrainingDiverged`) when the loss on any of them is
    not finite, before its gradients touch the weights; ``write`` records it in metrics.jsonl."""
    loss = loss.detach()
    bad = (~torch.isfinite(loss)).float().reshape(1)
    if acc.num_processes > 1:  # every process must stop together
        bad = acc.reduce(bad, reduction="sum")
    if bad.item() > 0:
        write({"step": step, "kind": "diverged", "loss": float(loss)})
        raise TrainingDiverged(
            f"training diverged: the loss is {float(loss)} at step {step} (no update was "
            f"made with it). Last good checkpoint: {last_checkpoint}. Lower train.lr, keep "
            "train.grad_clip on, or try mixed_precision: no/bf16, then resume_from: latest"
        )


def warn_if_no_room(cfg: TrainConfig, module: nn.Module, optimizer: Any) -> None:
    """Before the first step: warn when the output folder's disk cannot hold one checkpoint."""
    from contrasent.core.fileio import room_warning

    if cfg.checkpoint.every_steps:
        needed = ckpt.checkpoint_bytes(module, optimizer)
        warning = room_warning(cfg.output_dir, needed, "one checkpoint (model + optimizer state)")
        if warning:
            log.warning(warning)
