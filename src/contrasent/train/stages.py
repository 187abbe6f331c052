"""Multi-stage runs: several full runs in sequence in one ``contrasent train`` call.

ConSERT's supervised schedules are two runs: ``sup-unsup`` trains the NLI classifier, then the
contrastive loss on the target texts; ``joint-unsup`` the joint objective, then contrastive.
A recipe lists them under ``stages`` (:func:`contrasent.train.config.stage_configs`): stage ``i``
starts from stage ``i - 1``'s final encoder (or its best, with the stage's ``init_from: best``:
ConSERT's second script loads the model its first one saved at its best STS-B dev score) and
writes ``output_dir/stage-<i>-<name>/`` (its own checkpoints, metrics, best/ and final/). A
finished stage leaves ``stage_done.json`` there (written last, atomically); ``resume_from:
latest`` skips finished stages, resumes the first unfinished one from its newest checkpoint and
runs the rest. ``output_dir/final`` is the last
stage's final model (a symbolic link where the filesystem has them, else a copy).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contrasent.core.errors import UserError
from contrasent.core.fileio import atomic_write_text
from contrasent.core.launch import launched_rank, launched_world
from contrasent.train.config import TrainConfig, stage_configs

log = logging.getLogger(__name__)

DONE = "stage_done.json"


def _summary(result: Any) -> dict[str, Any]:
    return {
        "steps": result.steps,
        "best_metric": result.best_metric,
        "best_step": result.best_step,
        "first_eval": result.first_eval,
        "last_eval": result.last_eval,
        "stopped_early": result.stopped_early,
    }


def _from_summary(folder: Path, data: dict[str, Any]) -> Any:
    from contrasent.train.result import TrainResult

    best = folder / "best"
    return TrainResult(
        output_dir=folder,
        final_dir=folder / "final",
        best_dir=best if best.is_dir() else None,
        steps=int(data["steps"]),
        best_metric=data.get("best_metric"),
        best_step=data.get("best_step"),
        first_eval=data.get("first_eval"),
        last_eval=data.get("last_eval"),
        stopped_early=bool(data.get("stopped_early")),
    )


def _link_final(out: Path, last_final: Path) -> Path:
    target = out / "final"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    try:
        os.symlink(os.path.relpath(last_final, out), target, target_is_directory=True)
    except OSError:  # no symbolic links here (some network or Windows filesystems)
        shutil.copytree(last_final, target)
    return target


def _check_fresh(cfg: TrainConfig, folders: list[str]) -> None:
    out = Path(cfg.output_dir)
    existing = [f for f in folders if (out / f).exists()]
    if existing and cfg.resume_from is None and not cfg.overwrite_output_dir:
        raise UserError(
            f"output_dir {out} already holds stages of a run ({', '.join(existing)}); set "
            "resume_from: latest to continue it, overwrite_output_dir: true to start over, or "
            "choose another folder"
        )
    if cfg.resume_from not in (None, "latest"):
        raise UserError(
            "a staged recipe resumes with resume_from: latest (each stage resumes from its own "
            f"checkpoints), not from a path ({cfg.resume_from})"
        )


def _check_start(stage: TrainConfig, folder: str) -> None:
    """The previous stage's folder this stage starts from exists (``best/`` is only written
    when an evaluation gave a metric value)."""
    start = Path(stage.model.name_or_path)
    if not start.is_dir():
        raise UserError(
            f"stage {folder} starts from {start}, which the previous stage did not write (best/ "
            "needs an evaluation with a metric value); set that stage's init_from: final"
        )


def run_stages(cfg: TrainConfig, run_one: Callable[[TrainConfig], Any]) -> Any:
    """Run every stage with ``run_one(stage_config)``; the combined :class:`TrainResult`."""
    from contrasent.train.result import TrainResult

    stages = stage_configs(cfg)
    # every stage's settings are checked before the first one trains (a typo in stage 2 must not
    # surface after stage 1's hours)
    cfg.validate(launched_world())
    _check_fresh(cfg, [folder for folder, _ in stages])
    out = Path(cfg.output_dir)
    results: list[tuple[str, Any]] = []
    for i, (folder, stage) in enumerate(stages):
        done = out / folder / DONE
        if cfg.resume_from == "latest" and done.is_file() and (out / folder / "final").is_dir():
            log.info("stage %s is complete: skipped", folder)
            results.append((folder, _from_summary(out / folder, json.loads(done.read_text()))))
            continue
        stage.resume_from = cfg.resume_from
        stage.overwrite_output_dir = cfg.overwrite_output_dir
        if i > 0:
            stage.eval.at_start = False  # the previous stage's last evaluation is its "before"
            _check_start(stage, folder)
        log.info("stage %d/%d: %s", i + 1, len(stages), folder)
        result = run_one(stage)
        if launched_rank() == 0:
            atomic_write_text(done, json.dumps(_summary(result), indent=2, default=str) + "\n")
        results.append((folder, result))
    last = results[-1][1]
    final = _link_final(out, Path(last.final_dir)) if launched_rank() == 0 else None
    return TrainResult(
        output_dir=out,
        final_dir=final or out / "final",
        best_dir=last.best_dir,
        steps=sum(r.steps for _, r in results),
        best_metric=last.best_metric,
        best_step=last.best_step,
        first_eval=results[0][1].first_eval,
        last_eval=last.last_eval,
        last_train=last.last_train,
        last_checkpoint=last.last_checkpoint,
        stopped_early=last.stopped_early,
        stages=results,
    )
