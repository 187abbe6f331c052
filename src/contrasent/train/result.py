"""What a training run returns, and how it ends when it cannot finish."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrasent.core.errors import UserError

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
class RunState:
    """The loop's counters that a checkpoint saves (``trainer_state.json``)."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    last_eval_step: int | None = None
    evals_without_gain: int = 0
    last_checkpoint: str | None = None
    #: the run draws ``train.fast_dropout`` masks; False in checkpoints written before it
    #: existed, so that they resume with the draws they started with (torch's)
    fast_dropout: bool = False
