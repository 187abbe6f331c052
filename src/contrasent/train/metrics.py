"""Where training numbers go: a tqdm bar, ``metrics.jsonl`` and TensorBoard (main process only).

``metrics.jsonl`` holds one JSON object a line, each with ``step`` and ``kind``:

* ``"train"``: ``loss`` and the objective's named parts (averaged over the steps since the last
  line and over processes), ``lr``, ``grad_norm``, ``sentences_per_s`` (training rows of the
  global batch per second), ``epoch`` (fractional, when the epoch length is known);
* ``"eval"``: ``metric`` (the selection number), ``best``, and the STS numbers (``stsb``,
  ``sickr``, ``avg``; ``results`` holds the full evaluate_sts dict), ``alignment`` and
  ``uniformity`` (STS-B dev, ``contrasent.eval.diagnostics``), ``validation_loss`` (with
  ``data.validation``: the objective's loss on the held-out rows; TensorBoard
  ``eval/validation_loss``);
* ``"diverged"``: the step whose loss was not finite.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from contrasent.core.fileio import atomic_write_text

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    """JSON-safe numbers: NaN/inf become strings (json with allow_nan=False rejects them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def truncate_metrics(path: Path, after_step: int | None) -> None:
    """Fresh run (``after_step`` None): delete the file. Resume: drop lines past the resumed step,
    so a restarted run does not log the replayed steps twice."""
    if not path.exists():
        return
    if after_step is None:
        path.unlink()
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if step <= after_step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{x}\n" for x in kept))


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(
        self, output_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None
    ) -> None:
        self.enabled = enabled
        self.path = output_dir / METRICS_FILE
        self.tb = None
        if not enabled:
            return
        truncate_metrics(self.path, resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency
                log.info("tensorboard is not installed: metrics go to %s only", self.path)
            else:
                # purge_step drops events past the resumed step from the previous run
                self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(record), allow_nan=False) + "\n")
        if self.tb is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                scalar = isinstance(value, (int, float)) and not isinstance(value, bool)
                if key not in ("step", "kind") and scalar and math.isfinite(value):
                    self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class ProgressBar:
    """Progress over optimizer steps with loss, lr and sentences/s, and the ETA: a tqdm bar on a
    terminal, a plain line every 30 s when stderr is a file (Slurm, nohup)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:  # a bar on a terminal, plain lines in a log file (core.progress)
            from contrasent.core.progress import progress

            self.bar = progress(total, "train", "step", initial)

    def update(self, loss: float, lr: float, sentences_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.4g}", lr=f"{lr:.2e}", sent_s=f"{sentences_per_s:.0f}", refresh=False
            )
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Window:
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


def train_record(
    window: Window,
    step: int,
    lr: float,
    grad_norm: float | None,
    mean_over_processes: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, Any]:
    """The ``metrics.jsonl`` training record: each logged number averaged over the window's
    steps and over the processes, the learning rate, gradient norm and throughput."""
    names = sorted(window.sums)
    values = torch.stack([torch.as_tensor(window.sums[k], dtype=torch.float32) for k in names])
    values = mean_over_processes(values) / window.steps
    record: dict[str, Any] = {"step": step, "kind": "train"}
    record.update({k: float(v) for k, v in zip(names, values.tolist(), strict=True)})
    record.update(lr=lr, grad_norm=grad_norm)
    record["sentences_per_s"] = window.rows / max(time.perf_counter() - window.start, 1e-9)
    return record
