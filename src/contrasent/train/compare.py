"""``contrasent compare``: every method on the user's data under one budget, one table.

The comparison is a list of *units*, each with its own folder under ``output_dir`` so any of
them can run alone (``--run I``: a Slurm array task, a ``--parallel`` worker) and a killed
comparison resumes where it stopped:

* ``base/<pooling>``: the starting model evaluated once per pooling the methods use (no
  training): the first rows of the table, and step 0 of every curve;
* ``<method>/seed-<s>``: one training run through :func:`contrasent.train.loop.train` with the
  method's CPU recipe (``configs/``), the model, data, budget, seed and evaluation of the
  comparison put over it, then the user's per-method ``overrides``. It resumes with the loop's
  exact resume (``resume_from: latest``) from its last checkpoint.

Each unit ends by writing ``unit.json`` (status, reason, time, steps, examples) atomically; a unit
whose ``unit.json`` says ``done`` is skipped. A unit that cannot run on the data (a
:class:`~contrasent.core.errors.UserError`: DeCLUTR's documents too short, TSDAE on a family with
no decoder, ...) records ``failed`` with the one-line reason, and the comparison goes on.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contrasent.core.errors import UserError
from contrasent.core.fileio import atomic_write_text

log = logging.getLogger(__name__)

#: method -> its CPU recipe in ``configs/`` (the settings the comparison starts from)
METHODS: dict[str, str] = {
    "simcse_unsup": "simcse-unsup-cpu.yaml",
    "tsdae": "tsdae-cpu.yaml",
    "consert": "consert-unsup-cpu.yaml",
    "declutr": "declutr-cpu.yaml",
}
#: data kinds that read the comparison's ``--data`` file as one sentence a line
SENTENCE_KINDS = ("text", "sts_texts")
PLAN_FILE = "compare.json"  # the comparison's settings (what --table-only reads)
UNIT_FILE = "unit.json"  # one unit's outcome
BUDGET_KINDS = ("steps", "examples", "minutes")


@dataclass
class Budget:
    """How much training each method gets: ``steps=N`` optimizer steps, ``examples=N``
    training rows (steps = ceil(N / the recipe's batch)), or ``minutes=N`` of wall time."""

    kind: str
    amount: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        kind, sep, value = str(text).partition("=")
        kind = kind.strip()
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not sep or kind not in BUDGET_KINDS or not amount > 0 or not math.isfinite(amount):
            raise UserError(
                f"--budget {text!r}: use steps=N, examples=N or minutes=N (N > 0)", "budget"
            )
        if kind != "minutes" and amount != int(amount):
            raise UserError(f"--budget {text!r}: {kind} must be a whole number", "budget")
        return cls(kind, amount)

    def steps(self, batch_rows: int, recipe_steps: int) -> int:
        """Optimizer steps of a method whose step takes ``batch_rows`` training rows; a wall-time
        budget runs up to the recipe's steps (its lr schedule) and stops at the time."""
        if self.kind == "steps":
            return int(self.amount)
        if self.kind == "examples":
            return max(1, math.ceil(self.amount / batch_rows))
        return max(1, recipe_steps)

    def __str__(self) -> str:
        amount = int(self.amount) if self.amount == int(self.amount) else self.amount
        return f"{self.kind}={amount}"


@dataclass
class ComparePlan:
    """What one comparison runs (written to ``output_dir/compare.json``)."""

    model: str
    data: str
    methods: list[str]
    seeds: list[int]
    budget: str
    tasks: list[str]
    output_dir: str
    documents: str | None = None
    pooling: str | None = None
    validation: int | float | None = None
    eval_every: int = 0
    checkpoint_every: int = 0
    data_dir: str | None = None
    recipes: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    max_steps: int = 0

    def save(self) -> None:
        Path(self.output_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(self.output_dir) / PLAN_FILE, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, output_dir: str | Path) -> ComparePlan:
        path = Path(output_dir) / PLAN_FILE
        if not path.is_file():
            raise UserError(f"{path}: no comparison here (run contrasent compare first)")
        data = json.loads(path.read_text(encoding="utf-8"))
        data["output_dir"] = str(output_dir)  # the folder may have moved
        return cls(**data)


@dataclass
class Unit:
    """One row-maker: the base model under one pooling, or one (method, seed) run."""

    name: str  # "base/mean", "simcse_unsup/seed-1"
    method: str  # "base" for the starting model
    seed: int | None
    folder: Path
    pooling: str | None = None

    def outcome(self) -> dict[str, Any] | None:
        path = self.folder / UNIT_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def done(self) -> bool:
        return (self.outcome() or {}).get("status") == "done"

    def record(self, **values: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        entry = {"unit": self.name, "method": self.method, "seed": self.seed, **values}
        atomic_write_text(self.folder / UNIT_FILE, json.dumps(entry, indent=2) + "\n")


# ----------------------------------------------------------------------------- recipes
def recipes_dir(recipes: str | None) -> Path:
    """The folder of the methods' recipes: ``recipes`` or the repository's ``configs/``."""
    folder = Path(recipes) if recipes else Path(__file__).resolve().parents[3] / "configs"
    if not folder.is_dir():
        raise UserError(
            f"recipes folder {folder} not found: pass --recipes DIR (the repository's configs/)",
            "recipes",
        )
    return folder


def check_methods(methods: list[str]) -> None:
    for m in methods:
        if m not in METHODS:
            from contrasent.core.options import suggest

            raise UserError(
                f"--methods: unknown method {m!r}{suggest(m, list(METHODS))}; "
                f"choose from {', '.join(METHODS)}",
                "methods",
            )
    if len(set(methods)) != len(methods):
        raise UserError("--methods names a method twice", "methods")


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` key by key (mappings recursively)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def method_config(plan: ComparePlan, method: str, seed: int) -> dict[str, Any]:
    """The training recipe of one (method, seed): the method's CPU recipe with the comparison's
    model, data, budget, seed, evaluation and folder over it, then the user's overrides."""
    recipe = yaml.safe_load((recipes_dir(plan.recipes) / METHODS[method]).read_text()) or {}
    cfg = merge(recipe, plan.overrides.get(method) or {})  # overrides first: they set batch etc.
    cfg["model"] = {**cfg.get("model", {}), "name_or_path": plan.model}
    if plan.pooling:
        cfg["model"]["pooling"] = plan.pooling
    cfg["data"] = _data_section(plan, cfg.get("data", {}))
    t = cfg.setdefault("train", {})
    rows = int(t.get("batch_size", 64)) * int(t.get("grad_accum", 1))
    t["max_steps"] = Budget.parse(plan.budget).steps(rows, int(t.get("max_steps", 0)))
    if plan.max_steps:  # a quick check of the whole comparison
        t["max_steps"] = min(t["max_steps"], plan.max_steps)
    t["seed"] = seed
    cfg["eval"] = {
        "tasks": list(plan.tasks),
        "every_steps": plan.eval_every,
        "at_start": False,  # the base rows are step 0
        "at_end": True,
        "mode": "dev",
        "data_dir": plan.data_dir,
        "keep_best": False,  # the table reports the end of the budget, not a selected step
        "patience": 0,
    }
    every = plan.checkpoint_every or max(5, t["max_steps"] // 4)
    cfg["checkpoint"] = {"every_steps": every, "keep_last": 1}
    cfg["logging"] = {**cfg.get("logging", {}), "tensorboard": False}
    cfg["output_dir"] = str(Path(plan.output_dir) / method / f"seed-{seed}")
    cfg["resume_from"] = "latest"
    # the user's overrides win over the comparison's settings too (but not folder or seed)
    over = plan.overrides.get(method) or {}
    cfg = merge(cfg, {k: v for k, v in over.items() if k not in ("output_dir", "resume_from")})
    cfg["train"]["seed"] = seed
    return cfg


def _data_section(plan: ComparePlan, recipe_data: dict[str, Any]) -> dict[str, Any]:
    """The recipe's data settings (length, shuffling, span options) on the comparison's data:
    sentence methods read ``--data``; DeCLUTR reads ``--documents`` (each file one document,
    cut into the recipe's word windows) or, without it, ``--data`` one document a line."""
    data = {k: v for k, v in recipe_data.items() if k not in ("path", "options", "validation")}
    data["epochs"] = None  # the budget ends the run, never the end of a small corpus
    if recipe_data.get("kind") == "documents":
        options = dict(recipe_data.get("options") or {})
        options["document_format"] = "book" if plan.documents else "lines"
        data.update(kind="documents", path=plan.documents or plan.data, options=options)
    else:
        data.update(kind="text", path=plan.data)
        if plan.validation is not None:
            data["validation"] = plan.validation
    return data


# ----------------------------------------------------------------------------- units
def units(plan: ComparePlan) -> list[Unit]:
    """Every unit of the comparison in table order: base rows, then methods x seeds."""
    out = plan.output_dir
    poolings = []
    for method in plan.methods:
        pooling = plan.pooling or _recipe_pooling(plan, method)
        if pooling not in poolings:
            poolings.append(pooling)
    found = [Unit(f"base/{p or 'own'}", "base", None, Path(out) / "base" / (p or "own"), p)
             for p in poolings]  # fmt: skip
    for method in plan.methods:
        pooling = plan.pooling or _recipe_pooling(plan, method)
        for seed in plan.seeds:
            name = f"{method}/seed-{seed}"
            found.append(Unit(name, method, seed, Path(out) / method / f"seed-{seed}", pooling))
    return found


def _recipe_pooling(plan: ComparePlan, method: str) -> str | None:
    recipe = yaml.safe_load((recipes_dir(plan.recipes) / METHODS[method]).read_text()) or {}
    over = (plan.overrides.get(method) or {}).get("model") or {}
    return over.get("pooling", (recipe.get("model") or {}).get("pooling"))


def train_config(plan: ComparePlan, unit: Unit) -> Any:
    """The validated :class:`TrainConfig` of a (method, seed) unit (UserError: cannot run)."""
    from contrasent.train.config import TrainConfig

    cfg = TrainConfig.from_dict(method_config(plan, unit.method, int(unit.seed or 0)))
    cfg.validate()
    cfg.data.check_paths()
    return cfg


def run_unit(plan: ComparePlan, unit: Unit, progress_bar: bool = True) -> dict[str, Any]:
    """Run one unit unless it is done; its outcome (also in ``unit.json``)."""
    previous = unit.outcome()
    if previous and previous.get("status") == "done":
        log.info("%s: done before, skipped", unit.name)
        return previous
    if unit.method == "base":
        return _evaluate_base(plan, unit)
    try:
        cfg = train_config(plan, unit)
    except UserError as err:
        return _failed(unit, err)
    cfg.logging.progress_bar = progress_bar
    resumed = any((unit.folder / "checkpoints").glob("step-*"))
    log.info("%s: %s (%d steps)", unit.name, "resuming" if resumed else "training",
             cfg.train.max_steps)  # fmt: skip
    spent = float((previous or {}).get("train_s") or 0.0)
    return _train_unit(plan, unit, cfg, spent)


def _train_unit(plan: ComparePlan, unit: Unit, cfg: Any, spent: float) -> dict[str, Any]:
    from contrasent.train.loop import train

    budget = Budget.parse(plan.budget)
    start = time.perf_counter()
    rows = cfg.train.batch_size * cfg.train.grad_accum
    common = {"batch_rows": rows, "pooling": unit.pooling, "max_steps": cfg.train.max_steps}

    def on_step(step: int, _record: dict[str, Any]) -> bool:
        elapsed = spent + time.perf_counter() - start
        if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
            # the time up to the checkpoint a resume starts from
            unit.record(status="running", step=step, train_s=elapsed, **common)
        return budget.kind == "minutes" and elapsed >= budget.amount * 60

    try:
        result = train(cfg, callbacks=[on_step])
    except UserError as err:
        return _failed(unit, err)
    except Exception as exc:  # noqa: BLE001 - one broken run is a row, not the end of the table
        from contrasent.train.loop import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            raise  # Ctrl-C / SIGTERM: the whole comparison stops (and resumes later)
        (unit.folder / "error.txt").parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(unit.folder / "error.txt", traceback.format_exc())
        return _failed(unit, f"crashed: {type(exc).__name__}: {exc} (traceback: error.txt)")
    seconds = spent + time.perf_counter() - start
    # a finished run needs no resume state: final/ and metrics.jsonl are what the table reads
    shutil.rmtree(unit.folder / "checkpoints", ignore_errors=True)
    unit.record(status="done", steps=result.steps, examples=result.steps * rows,
                train_s=round(seconds, 2), **common)  # fmt: skip
    return unit.outcome() or {}


def _failed(unit: Unit, err: Exception | str) -> dict[str, Any]:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    unit.record(status="failed", reason=reason, pooling=unit.pooling)
    return unit.outcome() or {}


def _evaluate_base(plan: ComparePlan, unit: Unit) -> dict[str, Any]:
    """The starting model's evaluation with a pooling: the same tasks and code as the runs'."""
    import torch

    from contrasent.model.encoder import Encoder
    from contrasent.train.config import EvalConfig
    from contrasent.train.selection import eval_plan, eval_record, run_evaluation

    ev = EvalConfig(tasks=list(plan.tasks), mode="dev", data_dir=plan.data_dir)
    try:
        from contrasent.eval.metric_paths import resolve_metric

        ev.metric = resolve_metric(ev.tasks, None)
        evaluation = eval_plan(ev)
        module = torch.nn.Module()
        module.encoder = Encoder.from_pretrained(plan.model, pooling=unit.pooling)
        start = time.perf_counter()
        results = run_evaluation(module, ev, evaluation)
    except UserError as err:
        return _failed(unit, err)
    record = eval_record(0, results, ev, None, None, None)
    unit.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(unit.folder / "eval.json", json.dumps(record, indent=2) + "\n")
    unit.record(status="done", steps=0, examples=0, train_s=0.0, pooling=module.encoder.pooling,
                eval_s=round(time.perf_counter() - start, 2))  # fmt: skip
    return unit.outcome() or {}


def run_all(
    plan: ComparePlan,
    only: int | None = None,
    progress_bar: bool = True,
    say: Callable[[str], None] = print,
) -> None:
    """Run every unit in order (or only unit ``only``), skipping finished ones."""
    todo = units(plan)
    if only is not None:
        if not 0 <= only < len(todo):
            raise UserError(f"--run {only}: the comparison has units 0..{len(todo) - 1}", "run")
        todo = [todo[only]]
    refused: dict[str, str] = {}  # method -> why it could not start (the data, not a seed)
    for i, unit in enumerate(todo, 1):
        say(f"[{i}/{len(todo)}] {unit.name}")
        if unit.method in refused and not unit.done():
            unit.record(status="failed", reason=refused[unit.method], pooling=unit.pooling)
            say(f"  {unit.name}: cannot run (as its first seed): {refused[unit.method]}")
            continue
        outcome = run_unit(plan, unit, progress_bar)
        if outcome.get("status") == "failed":
            say(f"  {unit.name}: cannot run: {outcome.get('reason')}")
            if not (unit.folder / "metrics.jsonl").is_file():  # refused before its first step
                refused[unit.method] = str(outcome.get("reason"))
