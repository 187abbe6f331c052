"""`contrasent train`: train from a YAML recipe, then print the before/after tables and write the
run's report.

The options are :class:`contrasent.train.config.TrainConfig` itself (the recipe's sections).
"""

from __future__ import annotations

import shlex
from typing import Any

from contrasent.cli.args import quiet_transformers
from contrasent.core.launch import launched_rank
from contrasent.train.config import TrainConfig  # the options
from contrasent.train.stages import stage_configs

#: sections whose command-line options also apply inside every stage of a staged recipe
#: (objective and data stay each stage's own: they differ between stages by design)
STAGED_OVERRIDES = ("train", "eval", "checkpoint", "logging")


def check_train(cfg: TrainConfig) -> None:
    cfg.validate()
    for _, stage in stage_configs(cfg):
        stage.data.check_paths()  # a typo in a data path fails before the model loads
        if stage.eval.every_steps or stage.eval.at_end or stage.eval.at_start:
            from contrasent.data.senteval import resolve_data_dir

            resolve_data_dir(stage.eval.data_dir)


def run_train(cfg: TrainConfig) -> None:
    from contrasent.core.runlock import RunLock

    # taken before torch and the model load: a second run into the folder stops at once
    with RunLock(cfg.output_dir, "contrasent train", is_main=launched_rank() == 0):
        ok = False
        try:
            _run_train(cfg)
            ok = True
        finally:
            from contrasent.core.distributed import end_process_group

            end_process_group(ok)  # under torchrun: no gloo thread left for shutdown


def _run_train(cfg: TrainConfig) -> None:
    from contrasent.train.loop import train
    from contrasent.train.selection import fmt

    quiet_transformers()
    result = train(cfg)
    if launched_rank() != 0:  # under torchrun / accelerate: one summary only
        return
    _print_tables(result)
    if result.last_train:  # every logged part and count (e.g. documents skipped as too short)
        skip = ("step", "kind", "lr", "grad_norm", "sentences_per_s", "epoch")
        numbers = {k: v for k, v in result.last_train.items() if k not in skip and v is not None}
        text = ", ".join(f"{k} {v:.4g}" for k, v in numbers.items())
        print(f"last training record (step {result.last_train['step']}): {text}")
    if result.best_metric is not None:
        print(f"best {cfg.eval.metric} = {fmt(result.best_metric)} at step {result.best_step}")
    print(
        f"final model: {result.final_dir}"
        + (f"  best: {result.best_dir}" if result.best_dir else "")
    )
    for _, run in result.stages or [("", result)]:
        _write_report(run.output_dir)


def _print_tables(result: Any) -> None:
    """The STS table and the task files' tables before and after training (after each stage),
    and the diagnostics."""
    from contrasent.eval.tables import format_own_tables, format_rows, table_caption

    rows = []
    if result.first_eval:
        rows.append((f"before (step {result.first_eval['step']})", result.first_eval["results"]))
    for folder, stage in result.stages or [("", result)]:
        if stage.last_eval:
            where = f"{folder}, " if folder else ""
            rows.append(
                (f"after ({where}step {stage.last_eval['step']})", stage.last_eval["results"])
            )
    sts_rows = [(label, res) for label, res in rows if "avg" in res]  # STS was evaluated
    if sts_rows:
        print(f"\n{table_caption(sts_rows[-1][1])}\n{format_rows(sts_rows)}")
    own = format_own_tables(rows)
    if own:
        print(f"\n{own}")
    if rows:
        _print_diagnostics(result)


def _print_diagnostics(result: Any) -> None:
    """Alignment / uniformity (STS-B dev) before and after training, beside the STS table."""
    records = [("before", result.first_eval)]
    records += [(f"after {folder}".strip(), st.last_eval) for folder, st in result.stages or []]
    if not result.stages:
        records.append(("after", result.last_eval))
    for label, record in records:
        if record and record.get("alignment") is not None:
            print(
                f"{label} (step {record['step']}): alignment {record['alignment']:.4f}  "
                f"uniformity {record['uniformity']:.4f}  (STS-B dev)"
            )


def _write_report(run_dir: Any) -> None:
    """The run's report.html; a failure is reported (the run itself succeeded), not raised."""
    from contrasent.report import build_report

    try:
        print(f"report: {build_report(run_dir)}")
    except Exception as exc:  # noqa: BLE001 - the trained model is saved; say how to retry
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"report not written ({first}); retry with: contrasent report {run_dir}")


def overrides_reach_stages(cfg: TrainConfig, locations: dict[str, str]) -> None:
    """A command-line option is the user's last word: in a staged recipe ``--train.max_steps 4``
    caps every stage, over a stage's own ``train: {max_steps: 40}``."""
    if not cfg.stages:
        return
    for dotted, where in locations.items():
        section, *keys = dotted.split(".")
        if not where.startswith("--") or section not in STAGED_OVERRIDES or not keys:
            continue
        value = getattr(cfg, section)
        for key in keys:
            value = value[key] if isinstance(value, dict) else getattr(value, key)
        for stage in cfg.stages:
            if isinstance(stage, dict) and isinstance(stage.get(section), dict):
                target = stage[section]
                for key in keys[:-1]:
                    target = target.setdefault(key, {})
                target[keys[-1]] = value


def resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted ``train`` (argv with resume_from latest)."""
    out, skip = ["contrasent"], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith("--") and arg[2:].split("=", 1)[0].replace("-", "_") == "resume_from":
            skip = "=" not in arg and i + 1 < len(argv)
            continue
        out.append(arg)
    return shlex.join([*out, "--resume_from", "latest"])
