"""Stopping a run cleanly on SIGINT / SIGTERM (pre-emption by Slurm or Kubernetes)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import torch

from contrasent.train import checkpoint as ckpt
from contrasent.train.result import TrainingInterrupted


class StopSignals:
    """SIGINT and SIGTERM (what Slurm and Kubernetes send before pre-emption) ask the run to stop
    after the current step with a checkpoint; a second SIGINT stops at once. Installed on the
    main thread only (elsewhere Python cannot install handlers); the old handlers come back.

    ``trainer`` is the loop's run: the handler sets its ``signal`` and writes through its
    progress ``bar``; the loop checks ``signal`` after each step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer: Any) -> None:
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

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.saved.items():
            signal.signal(s, handler)


def stop_if_signalled(run: Any) -> None:
    """After a step of ``run`` (the loop's trainer): on SIGINT/SIGTERM (on any process) write a
    checkpoint and stop, all processes together."""
    flag = torch.tensor([float(run.signal or 0)], device=run.acc.device)
    if run.world > 1:
        flag = run.acc.reduce(flag, reduction="max")
    if not flag.item():
        return
    signum, step = int(flag.item()), run.state.step
    last = run.state.last_checkpoint
    if not (last and Path(last).name == ckpt.checkpoint_name(step)):
        run.save_checkpoint(step)
    run.metrics.write({"step": step, "kind": "interrupted", "signal": signum})
    name = signal.Signals(signum).name
    raise TrainingInterrupted(
        f"{name}: stopped after step {step} of {run.total}; checkpoint "
        f"{run.state.last_checkpoint}. Resume with resume_from: latest",
        signum,
        step,
        Path(run.state.last_checkpoint),
    )
