"""The table of a comparison, rebuilt from its unit folders alone (``--table-only``).

A row per method (the base model's rows first): for each evaluation column the mean and sample
standard deviation over the seeds that finished, their end-of-budget evaluation (the loop's last
``eval`` record in ``metrics.jsonl``; the base rows' ``eval.json``); training wall time and
examples seen; the best mean per column marked. A method that could not run is a row with its
reason. Written as Markdown (also printed), JSON and CSV, with a bar chart (error bars: the
standard deviation over seeds) and the metric curves over training as PNGs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrasent.core.fileio import atomic_write_text
from contrasent.train.compare import Budget, ComparePlan, Unit, units

VALIDATION_LOSS = "validation_loss"
FAIRNESS = (
    "same base model, data, seeds and evaluation code for every method; budget {budget} per run "
    "({what}); each method with its own recipe's settings (batch, lr, length, pooling as listed)"
)
HELD_OUT = (
    "; validation_loss is each method's own objective on held-out rows: comparable within a row "
    "(across seeds), not across methods"
)
_BUDGET_WORDS = {
    "steps": "the same number of optimizer steps: methods with larger batches see more examples",
    "examples": "the same number of training rows (documents for DeCLUTR)",
    "minutes": "the same wall time on this machine",
}


@dataclass
class Row:
    """One line of the table."""

    label: str
    method: str
    pooling: str | None
    seeds: int  # runs asked for (1 for a base row)
    values: dict[str, list[float]] = field(default_factory=dict)  # column -> one per finished run
    train_s: list[float] = field(default_factory=list)
    examples: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    curves: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # col -> step -> vals

    @property
    def finished(self) -> int:
        return len(self.train_s)


def columns(plan: ComparePlan) -> list[str]:
    """The evaluation columns: each task file's main metric, STS-B / SICK-R dev when named,
    then the held-out loss when ``validation`` is set."""
    from contrasent.eval.metric_paths import task_specs
    from contrasent.eval.tasks import KINDS

    out = []
    for spec in task_specs(plan.tasks):
        if spec.kind is not None:
            out.append(f"{spec.name}.{KINDS[spec.kind].main_metric}")
        elif spec.name in ("stsb", "sickr"):
            out.append(spec.name)
    return out + ([VALIDATION_LOSS] if plan.validation is not None else [])


def eval_records(path: Path) -> list[dict[str, Any]]:
    """The ``eval`` records of a run's ``metrics.jsonl`` (a last line cut by a kill skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "eval":
            out.append(record)
    return out


def collect(plan: ComparePlan) -> list[Row]:
    """The rows of the table from the unit folders (unfinished units count as missing seeds)."""
    cols = columns(plan)
    rows: dict[str, Row] = {}
    for unit in units(plan):
        label = f"base ({unit.pooling or 'own'})" if unit.method == "base" else unit.method
        row = rows.setdefault(
            label, Row(label, unit.method, unit.pooling, 1 if unit.seed is None else 0)
        )
        row.seeds += unit.seed is not None
        outcome = unit.outcome() or {}
        if outcome.get("status") == "failed":
            row.reasons.append(str(outcome.get("reason")))
        if outcome.get("status") != "done":
            continue
        _add_run(row, unit, outcome, cols)
    return list(rows.values())


def _add_run(row: Row, unit: Unit, outcome: dict[str, Any], cols: list[str]) -> None:
    if unit.method == "base":
        records = [json.loads((unit.folder / "eval.json").read_text(encoding="utf-8"))]
    else:
        records = eval_records(unit.folder / "metrics.jsonl")
    if not records:
        return
    row.pooling = outcome.get("pooling", row.pooling)
    for col in cols:
        value = records[-1].get(col)
        if isinstance(value, (int, float)) and math.isfinite(value):
            row.values.setdefault(col, []).append(float(value))
        for record in records:
            v = record.get(col)
            if isinstance(v, (int, float)) and math.isfinite(v):
                row.curves.setdefault(col, {}).setdefault(int(record["step"]), []).append(v)
    row.train_s.append(float(outcome.get("train_s") or 0.0))
    row.examples.append(int(outcome.get("examples") or 0))
    row.steps.append(int(outcome.get("steps") or 0))


def fairness(plan: ComparePlan) -> str:
    """What the comparison holds equal (the sentence under the table)."""
    budget = Budget.parse(plan.budget)
    text = FAIRNESS.format(budget=budget, what=_BUDGET_WORDS[budget.kind])
    return text + (HELD_OUT if plan.validation is not None else "")


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def best_rows(rows: list[Row], cols: list[str]) -> dict[str, str]:
    """Column -> label of the row with the best mean (the held-out loss has no best: each
    method's own loss)."""
    best = {}
    for col in cols:
        if col == VALIDATION_LOSS:
            continue
        scored = [(mean_std(r.values.get(col, []))[0], r.label) for r in rows]
        scored = [(m, label) for m, label in scored if m is not None]
        if scored:
            best[col] = max(scored)[1]
    return best


def _fmt(values: Sequence[float], spec: str) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:{spec}}" + ("" if std is None else f" ± {std:{spec}}")


def _spec(col: str, values: Sequence[float]) -> str:
    if col == VALIDATION_LOSS:
        return ".3g"  # a contrastive loss can sit near 1e-5
    return ".2f" if any(abs(v) > 1.5 for v in values) else ".4f"  # STS x100, else 0-1 metrics


def _note(row: Row) -> str:
    if row.reasons and not row.finished:
        return f"cannot run: {row.reasons[0]}"
    missing = row.seeds - row.finished
    note = f"{missing} of {row.seeds} runs unfinished" if missing else ""
    if row.reasons:
        note += f"; failed: {row.reasons[0]}"
    return note.strip("; ")


def markdown(plan: ComparePlan, rows: list[Row]) -> str:
    """The table in Markdown, best mean per column in bold, and what makes it fair."""
    cols = columns(plan)
    best = best_rows(rows, cols)
    head = ["method", "pooling", "runs", *cols, "train s", "examples", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.label, row.pooling or "own", f"{row.finished}/{row.seeds}"]
        for col in cols:
            values = row.values.get(col, [])
            text = _fmt(values, _spec(col, values))
            cells.append(f"**{text}**" if best.get(col) == row.label else text)
        cells.append(_fmt(row.train_s, ".0f") if row.method != "base" else "-")
        cells.append(str(max(row.examples)) if row.examples and row.method != "base" else "-")
        cells.append(_note(row))
        lines.append("| " + " | ".join(cells) + " |")
    fair = fairness(plan)
    lines += ["", f"mean ± std over seeds {', '.join(map(str, plan.seeds))}; bold: best mean. "
              f"Fair by construction: {fair}."]  # fmt: skip
    return "\n".join(lines)


def as_json(plan: ComparePlan, rows: list[Row]) -> dict[str, Any]:
    cols = columns(plan)
    out_rows = []
    for row in rows:
        metrics = {}
        for col in cols:
            values = row.values.get(col, [])
            mean, std = mean_std(values)
            metrics[col] = {"mean": mean, "std": std, "values": values}
        mean_s, std_s = mean_std(row.train_s)
        out_rows.append({
            "method": row.label, "pooling": row.pooling, "runs": row.finished,
            "seeds": row.seeds, "metrics": metrics,
            "train_s": {"mean": mean_s, "std": std_s, "values": row.train_s},
            "examples": row.examples, "steps": row.steps, "note": _note(row) or None,
            "curves": {c: {str(s): statistics.fmean(v) for s, v in sorted(pts.items())}
                       for c, pts in row.curves.items()},
        })  # fmt: skip
    budget = Budget.parse(plan.budget)
    return {
        "columns": cols,
        "best": best_rows(rows, cols),
        "budget": str(budget),
        "fairness": fairness(plan),
        "seeds": plan.seeds,
        "model": plan.model,
        "rows": out_rows,
    }


def as_csv(plan: ComparePlan, rows: list[Row]) -> str:
    cols = columns(plan)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "pooling", "runs", "seeds"]
                    + [f"{c}_{s}" for c in cols for s in ("mean", "std")]
                    + ["train_s_mean", "train_s_std", "examples", "steps", "note"])  # fmt: skip
    for row in rows:
        stats = [x for c in cols for x in mean_std(row.values.get(c, []))]
        writer.writerow([row.label, row.pooling or "own", row.finished, row.seeds,
                         *["" if x is None else x for x in stats],
                         *["" if x is None else x for x in mean_std(row.train_s)],
                         max(row.examples, default=""), max(row.steps, default=""),
                         _note(row)])  # fmt: skip
    return buf.getvalue()


def plots(plan: ComparePlan, rows: list[Row], folder: Path) -> list[Path]:
    """``bars.png`` (mean per method, error bars: std over seeds) and ``curves.png`` (each
    column against the step, mean over seeds, from the base model's value at step 0)."""
    from contrasent.eval.plots import _figure, save_png

    cols = [c for c in columns(plan) if any(r.values.get(c) for r in rows)]
    bars = [c for c in cols if c != VALIDATION_LOSS]  # methods' own losses: no side by side
    if not cols:
        return []
    written = []
    if bars:
        written.append(_bars(rows, bars, folder / "bars.png"))
    fig = _figure(4.2 * len(cols), 3.4)
    axes = fig.subplots(1, len(cols), squeeze=False)[0]
    bases = {r.pooling: r for r in rows if r.method == "base"}
    for ax, col in zip(axes, cols, strict=True):
        for row in rows:
            if row.method == "base" or not row.curves.get(col):
                continue
            points = {s: statistics.fmean(v) for s, v in row.curves[col].items()}
            base = bases.get(row.pooling)
            if base is not None and base.values.get(col) and col != VALIDATION_LOSS:
                points.setdefault(0, base.values[col][0])
            steps = sorted(points)
            ax.plot(steps, [points[s] for s in steps], marker="o", ms=3, lw=1, label=row.label)
        ax.set_title(col, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    written.append(save_png(fig, folder / "curves.png"))
    return written


def _bars(rows: list[Row], cols: list[str], path: Path) -> Path:
    """Mean per row for each column, error bars: the std over seeds (base rows grey)."""
    from contrasent.eval.plots import _figure, save_png

    fig = _figure(4.2 * len(cols), 3.6)
    axes = fig.subplots(1, len(cols), squeeze=False)[0]
    for ax, col in zip(axes, cols, strict=True):
        shown = [r for r in rows if r.values.get(col)]
        stats = [mean_std(r.values[col]) for r in shown]
        ax.bar(range(len(shown)), [m for m, _ in stats], yerr=[s or 0.0 for _, s in stats],
               capsize=4, color=["tab:gray" if r.method == "base" else "tab:blue" for r in shown])  # fmt: skip
        ax.set_xticks(range(len(shown)), [r.label for r in shown], rotation=30, ha="right",
                      fontsize=8)  # fmt: skip
        low = min(m - (s or 0) for m, s in stats)
        high = max(m + (s or 0) for m, s in stats)
        pad = (high - low) * 0.3 or abs(high) * 0.05 or 0.01
        ax.set_ylim(low - pad, high + pad)
        ax.set_title(col, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    return save_png(fig, path)


def write_table(plan: ComparePlan) -> tuple[str, list[Path]]:
    """Write ``table.md``, ``table.json``, ``table.csv`` and the PNGs; the Markdown table."""
    out = Path(plan.output_dir)
    rows = collect(plan)
    text = markdown(plan, rows)
    atomic_write_text(out / "table.md", text + "\n")
    atomic_write_text(out / "table.json", json.dumps(as_json(plan, rows), indent=2) + "\n")
    atomic_write_text(out / "table.csv", as_csv(plan, rows))
    return text, plots(plan, rows, out)
