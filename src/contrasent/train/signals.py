"""Stopping a run cleanly on SIGINT / SIGTERM (pre-emption by Slurm or Kubernetes)."""

from __future__ import annotations

import signal
import threading
from typing import Any


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
