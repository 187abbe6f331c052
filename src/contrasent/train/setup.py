"""Setting a run up: the accelerator, the objective, the step count, the output folder."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from contrasent.errors import UserError
from contrasent.objectives.base import Objective
from contrasent.train.config import TrainConfig

log = logging.getLogger(__name__)


def make_accelerator(mixed_precision: str):
    """The run's ``Accelerator``: DDP with unused-parameter detection, our own scheduler
    stepping, CPU multi-process support, and precision checked against the device."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    # Launched as several processes (torchrun / accelerate launch) on a machine without CUDA:
    # accelerate only sets up gloo for CPU when asked, and would otherwise run every process as
    # a lone "main" process (all writing the same files) beside an initialised process group.
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = launched > 1 and not torch.cuda.is_available()
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
    if "WORLD_SIZE" in os.environ and accelerator.num_processes != launched:
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


def check_custom_objective(cfg: TrainConfig, objective: Objective) -> None:
    """An objective instance passed from Python must fit the data kind and the cache setting."""
    from contrasent.data.sources import data_kind

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

    from contrasent.rng import keyed_rng

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
