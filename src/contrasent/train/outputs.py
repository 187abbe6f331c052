"""The run folder: nothing of an earlier run is lost when a new run fails, is interrupted or killed.

A fresh run in a folder that holds an earlier run's outputs (with ``overwrite_output_dir``):

1. :meth:`RunFolder.check` (before the model loads) refuses the folder unless overwriting or
   resuming, and refuses a path that is a file or cannot be written;
2. :meth:`RunFolder.set_aside` (after the config is validated, the model loaded and the data
   opened) MOVES the earlier outputs into ``output_dir/.previous/``; nothing is deleted;
3. :meth:`RunFolder.commit` (when the new run has its first checkpoint or its final model)
   deletes ``.previous/``: the new run now has something better to resume from;
4. :meth:`RunFolder.rollback` (the run failed or was interrupted before that) deletes the new
   run's partial outputs and moves the earlier ones back.

A run killed (SIGKILL, power loss) between 2 and 3 leaves ``.previous/``; the next run in the
folder (:meth:`RunFolder.recover`) puts it back when the killed run left no checkpoint or final
model, and deletes it otherwise. Model folders replaced by ``Encoder.save`` are swapped with two
renames; a kill between them is repaired here too (``core.fileio.repair_swaps``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from contrasent.core.errors import UserError
from contrasent.core.fileio import atomic_write_text, repair_swaps
from contrasent.model.st_layout import META_FILE
from contrasent.train import checkpoint as ckpt

log = logging.getLogger(__name__)

PREVIOUS = ".previous"
CONFIG = "config.json"
#: what a run writes into its folder (everything else there is left alone)
RUN_OUTPUTS = (
    ckpt.CHECKPOINTS, "best", "final", "tensorboard", "metrics.jsonl", CONFIG,
    "stage_done.json",  # train.stages.DONE: a stage of a staged run finished here
    "report",  # contrasent.report.REPORT_DIR: `contrasent train` writes it at the end
)  # fmt: skip
#: what makes a run worth keeping over the one before it
RESULTS = (ckpt.CHECKPOINTS, "final")


class RunFolder:
    """One run's ``output_dir``; the main process writes, every process checks."""

    def __init__(self, path: str | os.PathLike, is_main: bool) -> None:
        self.path = Path(path)
        self.is_main = is_main
        self.aside: Path | None = None

    def _present(self) -> list[str]:
        return [n for n in RUN_OUTPUTS if (self.path / n).exists()]

    def _has_results(self) -> bool:
        return bool(ckpt.list_checkpoints(self.path)) or (self.path / "final").is_dir()

    def check(self, overwrite: bool, resuming: bool) -> None:
        """Refuse a folder this run cannot use, before anything is loaded or written."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise UserError(f"output_dir {p} exists and is not a folder")
        parent = next(a for a in [p, *p.parents] if a.exists())
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"output_dir {p}: cannot write in {parent}")
        previous = [n for n in self._present() if n != CONFIG]
        if not resuming and previous and not overwrite:
            raise UserError(
                f"output_dir {p} already holds a run ({', '.join(previous)}); "
                "--resume_from latest continues it, --overwrite_output_dir true replaces it "
                "(its outputs are kept until the new run has a checkpoint or a model), or "
                "choose another --output_dir"
            )

    def recover(self) -> None:
        """Undo what a killed run left half done (see the module docstring)."""
        if not self.is_main or not self.path.is_dir():
            return
        for name in ("best", "final"):
            repair_swaps(self.path / name, META_FILE)
        aside = self.path / PREVIOUS
        if not aside.is_dir():
            return
        if self._has_results():
            log.warning("%s: a killed run had replaced an earlier one; removing it", aside)
            shutil.rmtree(aside)
            return
        log.warning("%s: a killed run left no results; restoring the run before it", self.path)
        self._remove_outputs()
        self._move(aside, self.path)
        aside.rmdir()

    def set_aside(self) -> None:
        """Move an earlier run's outputs into ``.previous/`` (a fresh run that overwrites)."""
        present = self._present()
        if not self.is_main or not present:
            return
        aside = self.path / PREVIOUS
        aside.mkdir()
        for name in present:
            os.replace(self.path / name, aside / name)
        self.aside = aside
        log.info("earlier outputs of %s set aside until this run has a checkpoint", self.path)

    def commit(self) -> None:
        """The new run has a checkpoint or a model: the earlier run's outputs go."""
        if self.aside is not None and self.aside.exists():
            shutil.rmtree(self.aside)
        self.aside = None

    def rollback(self) -> None:
        """The new run failed before :meth:`commit`: restore the earlier outputs."""
        if self.aside is None or not self.aside.exists():
            return
        self._remove_outputs()
        self._move(self.aside, self.path)
        self.aside.rmdir()
        self.aside = None
        log.warning("the earlier run's outputs in %s were restored", self.path)

    def write_config(self, config: dict[str, Any]) -> None:
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            text = json.dumps(config, indent=2, default=str) + "\n"
            atomic_write_text(self.path / CONFIG, text)

    def _remove_outputs(self) -> None:
        for name in self._present():
            target = self.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()

    @staticmethod
    def _move(src: Path, dst: Path) -> None:
        for item in src.iterdir():
            os.replace(item, dst / item.name)
