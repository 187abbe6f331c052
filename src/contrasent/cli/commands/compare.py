"""`contrasent compare`: every method on your data, the same budget and seeds, one table.

The options live in one section, ``compare`` (a YAML file: ``compare: {model: ..., methods:
[...]}``; on the command line without the prefix: ``--methods simcse_unsup,tsdae``). The work is
:mod:`contrasent.train.compare`; the table :mod:`contrasent.train.compare_table`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrasent.cli.args import quiet_transformers
from contrasent.core.errors import UserError
from contrasent.model.pooling import Pooling

DEFAULT_METHODS = "simcse_unsup,tsdae,consert,declutr"


@dataclass
class CompareArgs:
    """Train each method from the same model on the same data under the same budget and seeds,
    evaluate all of them (and the model itself) on the same tasks, and write one table.

    Args:
        model: The base model (hub id or folder): every method starts from it; it is also the
            table's first row, evaluated untrained.
        data: Unlabeled text, one sentence a line: what every sentence method trains on.
        documents: Long documents for DeCLUTR (a file or a folder of files, each file one
            document, cut into the recipe's word windows); default: ``data``, one document a
            line (too short for DeCLUTR's spans: its row then says so).
        methods: Methods to compare (a list or comma list): simcse_unsup, tsdae, consert,
            declutr. Each runs with its CPU recipe's settings (``configs/*-cpu.yaml``).
        budget: ``steps=N`` (optimizer steps), ``examples=N`` (training rows: steps =
            N / the method's batch) or ``minutes=N`` (wall time per run; up to the recipe's
            steps).
        seeds: Number of seeds (1..N) or a list of seeds; every method runs once per seed.
        eval: What to evaluate, as ``contrasent eval --tasks`` takes it: your task files
            (``NAME=retrieval:PATH``, ``pairs:PATH``, ...) and STS names (``stsb``, ``sickr``:
            dev split). The table has a column per task (its kind's main metric).
        pooling: One pooling for every method and the base row; default: each method's recipe's
            (the base model is then evaluated once per pooling used).
        validation: Rows (or a fraction) of ``data`` held out of training: each method's own
            loss on them is a column (comparable across seeds, not across methods).
        eval_every: Also evaluate every this many steps (the curves); 0: at the end only.
        checkpoint_every: Checkpoint every this many steps (what a killed comparison resumes
            from; deleted once the run is finished); 0: a quarter of the steps (at least 5).
        data_dir: SentEval folder for ``stsb`` / ``sickr``; default: ``$CONTRASENT_DATA``.
        recipes: Folder of the methods' recipes; default: the repository's ``configs/``.
        overrides: Per-method settings over its recipe, e.g. ``{simcse_unsup: {objective:
            {mlp: false}, train: {lr: 2.0e-5}}}``.
        max_steps: Cap every run at this many steps (also ``--train.max_steps``): a quick check
            that the whole comparison runs; 0: the budget.
        output_dir: The comparison's folder: a folder per run (``METHOD/seed-S``) and the base
            rows (``base/POOLING``), ``table.md`` / ``.json`` / ``.csv``, ``bars.png``,
            ``curves.png``, ``report.html``. Started again, finished runs are skipped and an
            interrupted one resumes from its checkpoint.
        table_only: Only rebuild the table from ``output_dir`` (after ``--run`` jobs).
        run: Run only unit I (``--list_units`` numbers them): one job of a cluster array.
        list_units: Save the plan to ``output_dir`` and list its units (for ``--run``); train nothing.
        parallel: Units run at once, each in its own process (CPU threads split between them).
        progress_bar: Show each run's progress bar.
    """

    model: str = ""
    data: str = ""
    documents: str | None = None
    methods: list[str] | str = DEFAULT_METHODS
    budget: str = "steps=100"
    seeds: list[int] | int = 3
    eval: list[str] | str | None = None
    pooling: Pooling | None = None
    validation: int | float | None = None
    eval_every: int = 0
    checkpoint_every: int = 0
    data_dir: str | None = None
    recipes: str | None = None
    overrides: dict[str, Any] | None = None
    max_steps: int = 0
    output_dir: str = "runs/compare"
    table_only: bool = False
    run: int | None = None
    list_units: bool = False
    parallel: int = 1
    progress_bar: bool = True


@dataclass
class CompareConfig:
    """``contrasent compare`` options (the ``compare:`` section of a YAML file).

    Attributes:
        compare: The comparison.
    """

    compare: CompareArgs = field(default_factory=CompareArgs)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _seeds(value: Any) -> list[int]:
    if isinstance(value, int):
        if value < 1:
            raise UserError(f"--seeds must be >= 1, got {value}", "compare.seeds")
        return list(range(1, value + 1))
    seeds = [int(v) for v in value]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError("--seeds: give a count or distinct seeds", "compare.seeds")
    return seeds


def plan_of(args: CompareArgs) -> Any:
    """The comparison these options ask for (checked; nothing loaded): a new plan, or the one
    saved in ``output_dir`` when no model is given (``--table-only``, ``--run``, a restart)."""
    from contrasent.train.compare import Budget, ComparePlan, check_methods, recipes_dir

    if not args.output_dir:
        raise UserError("--output_dir is required", "compare.output_dir")
    if not args.model:
        if (Path(args.output_dir) / "compare.json").is_file():
            return ComparePlan.load(args.output_dir)
        raise UserError(
            f"--model is required ({args.output_dir} holds no comparison to continue)",
            "compare.model",
        )
    if not args.data:
        raise UserError("--data is required (unlabeled text, one sentence a line)", "compare.data")
    for name in ("data", "documents"):
        path = getattr(args, name)
        if path and not Path(path).exists():
            raise UserError(f"--{name} {path}: no such file or folder", f"compare.{name}")
    methods = _as_list(args.methods)
    check_methods(methods)
    Budget.parse(args.budget)
    tasks = _as_list(args.eval)
    if not tasks:
        raise UserError("--eval is required: the tasks every method is judged on (own task "
                        "files as in contrasent eval --tasks, or stsb)", "compare.eval")  # fmt: skip
    from contrasent.eval.metric_paths import resolve_metric

    resolve_metric(tasks, None)  # task files exist, kinds known
    for name in ("eval_every", "checkpoint_every"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be >= 0", f"compare.{name}")
    if args.parallel < 1:
        raise UserError("--parallel must be >= 1", "compare.parallel")
    recipes_dir(args.recipes)
    unknown = sorted(set(args.overrides or {}) - set(methods))
    if unknown:
        raise UserError(
            f"--overrides names {unknown[0]!r}, not one of --methods", "compare.overrides"
        )
    return ComparePlan(
        model=args.model, data=args.data, methods=methods, seeds=_seeds(args.seeds),
        budget=args.budget, tasks=tasks, output_dir=args.output_dir, documents=args.documents,
        pooling=args.pooling, validation=args.validation, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, data_dir=args.data_dir, recipes=args.recipes,
        overrides=dict(args.overrides or {}), max_steps=args.max_steps,
    )  # fmt: skip


def check_compare(cfg: CompareConfig) -> None:
    args = cfg.compare
    if args.table_only and not (Path(args.output_dir) / "compare.json").is_file():
        raise UserError(f"--table-only: {args.output_dir} holds no comparison (compare.json)")
    cfg.plan = plan_of(args)  # type: ignore[attr-defined]


def _same_comparison(saved: Any, plan: Any) -> None:
    """A new plan in a folder that holds another comparison's runs: what may not change."""
    for key in ("model", "data", "documents", "budget", "tasks", "pooling", "validation",
                "max_steps"):  # fmt: skip
        if getattr(saved, key) != getattr(plan, key):
            raise UserError(
                f"{plan.output_dir} holds a comparison with another {key} "
                f"({getattr(saved, key)!r}); use another --output_dir",
                f"compare.{key if key != 'tasks' else 'eval'}",
            )


def run_compare(cfg: CompareConfig) -> None:
    from contrasent.core.runlock import RunLock
    from contrasent.train.compare import ComparePlan, run_all, units

    args, plan = cfg.compare, cfg.plan  # type: ignore[attr-defined]
    quiet_transformers()
    if not args.table_only:
        saved = Path(plan.output_dir) / "compare.json"
        if args.model and saved.is_file():
            _same_comparison(ComparePlan.load(plan.output_dir), plan)
        plan.save()
        if args.list_units:
            for i, unit in enumerate(units(plan)):
                print(f"{i}\t{unit.name}\t{unit.folder}")
            return
        if args.run is not None:  # one job of an array: the jobs share the folder by design
            run_all(plan, only=args.run, progress_bar=args.progress_bar)
            return
        # one comparison per folder: a second `compare` into it is refused with one line
        # (each unit's training also locks its own run folder)
        with RunLock(plan.output_dir, "contrasent compare"):
            if args.parallel > 1:
                _run_parallel(plan, args.parallel)
            else:
                run_all(plan, progress_bar=args.progress_bar)
    _print_table(plan)


def _run_parallel(plan: Any, k: int) -> None:
    """Every unit in its own ``contrasent compare --run I`` process, ``k`` at a time (CPU
    threads split between them); each writes ``logs/I.log``."""
    from contrasent.train.compare import units

    todo = [i for i, u in enumerate(units(plan)) if not u.done()]
    logs = Path(plan.output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // k)))

    def one(i: int) -> int:
        cmd = [sys.executable, "-m", "contrasent.cli.main", "compare",
               "--output_dir", plan.output_dir, "--run", str(i), "--progress_bar", "false"]  # fmt: skip
        with (logs / f"{i}.log").open("w") as log:
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode

    with ThreadPoolExecutor(k) as pool:
        codes = list(pool.map(one, todo))
    failed = [str(i) for i, c in zip(todo, codes, strict=True) if c]
    if failed:
        print(f"units {', '.join(failed)} stopped with an error: see {logs}/I.log")


def _print_table(plan: Any) -> None:
    from contrasent.report import build_compare_report
    from contrasent.train.compare_table import write_table

    text, pngs = write_table(plan)
    print(f"\n{text}\n")
    out = Path(plan.output_dir)
    print(f"table: {out / 'table.md'} (.json, .csv)  plots: {', '.join(p.name for p in pngs)}")
    print(f"report: {build_compare_report(out, text, pngs)}")
