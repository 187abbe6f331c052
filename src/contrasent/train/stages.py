"""Multi-stage runs: several full runs in sequence in one ``contrasent train`` call.

ConSERT's supervised schedules are two runs: ``sup-unsup`` trains the NLI classifier, then the
contrastive loss on the target texts; ``joint-unsup`` the joint objective, then contrastive.
A recipe lists them under ``stages`` (:func:`stage_configs`): stage ``i``
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
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from contrasent.core.errors import UserError
from contrasent.core.fileio import atomic_write_text
from contrasent.core.launch import launched_rank, launched_world

log = logging.getLogger(__name__)
# contrasent.train.config.TrainConfig, not imported: its validate() expands the stages with
# stage_configs below, and an import each way would be a cycle.
Config = TypeVar("Config")  # a TrainConfig

DONE = "stage_done.json"


STAGE_KEYS = (
    "name", "objective", "data", "train", "eval", "checkpoint", "logging", "model", "init_from"
)  # fmt: skip
INIT_FROM = ("final", "best")  # which folder of the previous stage a stage starts from
_REPLACED = ("objective", "data")  # a stage's own; merging two objectives' options is wrong
_MODEL_KEYS = ("pooling", "normalize", "max_seq_length")


def stage_configs(cfg: Config) -> list[tuple[str, Config]]:
    """``(folder name, config)`` of each stage: the top level with the stage's sections over it.

    Stage ``i > 0`` starts from ``<stage i-1 folder>/final``, or ``/best`` with the stage's
    ``init_from: best`` (the previous stage must keep one: ``eval.keep_best``); every stage
    writes to its own folder under ``output_dir`` and resumes there.
    """
    if not cfg.stages:
        return [("", cfg)]
    base = asdict(cfg)
    base.pop("stages")
    out: list[tuple[str, Config]] = []
    for i, raw in enumerate(cfg.stages, 1):
        if not isinstance(raw, Mapping):
            raise UserError(f"stages[{i - 1}] must be a mapping, got {raw!r}")
        unknown = sorted(set(raw) - set(STAGE_KEYS))
        if unknown:
            from contrasent.core.options import suggest

            raise UserError(
                f"stages[{i - 1}]: unknown key {unknown[0]!r}{suggest(unknown[0], STAGE_KEYS)}; "
                f"a stage may set {', '.join(STAGE_KEYS)}"
            )
        bad_model = sorted(set(raw.get("model") or {}) - set(_MODEL_KEYS))
        if bad_model:
            raise UserError(
                f"stages[{i - 1}].model: {bad_model[0]!r} cannot change between stages (a stage "
                f"starts from the previous stage's model); it may set {', '.join(_MODEL_KEYS)}"
            )
        name = str(raw.get("name") or raw.get("objective", {}).get("name") or f"stage{i}")
        folder = f"stage-{i}-{name}"
        merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
        init_from = _init_from(raw, i, out)
        for key, value in raw.items():
            if key in ("name", "init_from"):
                continue
            if key in _REPLACED or not isinstance(value, Mapping):
                merged[key] = value
            else:
                merged[key] = {**merged.get(key, {}), **value}
        merged["output_dir"] = str(Path(cfg.output_dir) / folder)
        if out:
            merged["model"]["name_or_path"] = str(Path(out[-1][1].output_dir) / init_from)
        merged["resume_from"] = None
        out.append((folder, type(cfg).from_dict(merged)))
    return out


def _init_from(raw: Mapping[str, Any], i: int, previous: list[tuple[str, Config]]) -> str:
    """Stage ``i``'s (1-based) ``init_from``, checked: a known value, not on the first stage,
    and ``best`` only after a stage that keeps a ``best/``."""
    value = raw.get("init_from", "final")
    where = f"stages[{i - 1}].init_from"
    if value not in INIT_FROM:
        raise UserError(f"{where} must be one of {', '.join(INIT_FROM)}, got {value!r}")
    if "init_from" in raw and not previous:
        raise UserError(
            f"{where}: the first stage starts from model.name_or_path; set init_from "
            "on a later stage"
        )
    if value == "best" and not previous[-1][1].eval.keep_best:
        raise UserError(
            f"{where} is best but stage {i - 1} keeps no best/ "
            f"(its eval.keep_best is false); set init_from: final or keep_best: true"
        )
    return value


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


def _check_fresh(cfg: Config, folders: list[str]) -> None:
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


def _check_start(stage: Config, folder: str) -> None:
    """The previous stage's folder this stage starts from exists (``best/`` is only written
    when an evaluation gave a metric value)."""
    start = Path(stage.model.name_or_path)
    if not start.is_dir():
        raise UserError(
            f"stage {folder} starts from {start}, which the previous stage did not write (best/ "
            "needs an evaluation with a metric value); set that stage's init_from: final"
        )


def run_stages(cfg: Config, run_one: Callable[[Config], Any]) -> Any:
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
