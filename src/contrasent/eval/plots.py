"""PNG figures of an evaluation or a run (matplotlib's Agg canvas: no display needed).

Figures are built on ``matplotlib.figure.Figure`` directly (not pyplot), so nothing global is
touched and nothing tries to open a window; each PNG is rendered in memory and written atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically (rendered in memory, then ``atomic_write_bytes``)."""
    from contrasent.core.fileio import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def sts_scatter(
    task: str, parts: Mapping[str, tuple[np.ndarray, np.ndarray]], spearman: float | None, path
) -> Path:
    """Gold score vs cosine similarity of one STS task; one colour per subset / split."""
    fig = _figure(4.8, 4.2)
    ax = fig.add_subplot()
    many = len(parts) > 1
    for name, (gold, cos) in parts.items():
        ax.scatter(gold, cos, s=4, alpha=0.35, label=name if many else None, linewidths=0)
    if many:
        ax.legend(fontsize=7, markerscale=3, loc="lower right")
    label = "" if spearman is None else f"  (Spearman {spearman:.2f})"
    ax.set_title(f"{task}{label}", fontsize=10)
    ax.set_xlabel("gold score")
    ax.set_ylabel("cosine similarity")
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def similarity_distribution(panels: Mapping[str, Mapping[str, Any]], path) -> Path:
    """ConSERT's figure 1: density of the pairs' cosine similarity per gold-score group, one
    panel per model (``panels``: label -> ``diagnostics["similarity"]``)."""
    from matplotlib import colormaps

    fig = _figure(4.2 * len(panels) + 0.6, 3.6)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    cmap = colormaps["viridis"]
    for ax, (label, sim) in zip(axes, panels.items(), strict=True):
        edges = np.asarray(sim["bin_edges"])
        centers, width = (edges[1:] + edges[:-1]) / 2, edges[1] - edges[0]
        groups = sim["groups"]
        for i, g in enumerate(groups):
            hist = np.asarray(g["hist"], dtype=np.float64)
            if hist.sum() == 0:
                continue
            lo, hi = g["gold"]
            ax.plot(
                centers,
                hist / (hist.sum() * width),
                color=cmap(i / max(1, len(groups) - 1)),
                label=f"gold {lo:g}-{hi:g} (n={g['n']})",
            )
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("cosine similarity of the pair")
        ax.set_xlim(edges[0], edges[-1])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("density")
    axes[-1].legend(fontsize=7, loc="upper left")
    return save_png(fig, path)


def own_task_curves(evals: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """``NAME.METRIC`` -> its value at each evaluation, for each task file's main metric and
    the held-out ``validation_loss`` (what a run without STS is judged by)."""
    from contrasent.core.results import own_tasks
    from contrasent.eval.tasks import KINDS

    last = (evals[-1].get("results") if evals else None) or {}
    keys = [f"{n}.{KINDS[r['kind']].main_metric}" for n, r in own_tasks(last).items()]
    keys += ["validation_loss"] if any(r.get("validation_loss") is not None for r in evals) else []
    return {k: [_num(r.get(k)) for r in evals] for k in keys}


def training_curves(train: Sequence[Mapping[str, Any]], evals: Sequence[Mapping[str, Any]], path):
    """Loss, learning rate, the STS dev numbers and the task files' main metrics against the
    optimizer step."""
    own = own_task_curves(evals)
    fig = _figure(16 if own else 12, 3.4)
    axes = fig.subplots(1, 4 if own else 3)
    ax_loss, ax_lr, ax_sts = axes[:3]
    if own:
        e_steps = [r["step"] for r in evals]
        loss = own.pop("validation_loss", None)
        for key, values in own.items():
            axes[3].plot(e_steps, values, marker="o", ms=3, lw=1, label=key)
        if loss is not None:  # its own scale, on the right
            right = axes[3].twinx()
            right.plot(e_steps, loss, marker="s", ms=3, lw=1, color="tab:red", ls="--")
            right.set_ylabel("validation_loss (dashed)", fontsize=8, color="tab:red")
        axes[3].set_title("your tasks (eval)", fontsize=10)
        if own:
            axes[3].legend(fontsize=8)
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [_num(r.get("loss")) for r in train], lw=1)
    ax_loss.set_title("training loss", fontsize=10)
    ax_lr.plot(steps, [_num(r.get("lr")) for r in train], lw=1, color="tab:orange")
    ax_lr.set_title("learning rate", fontsize=10)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    e_steps = [r["step"] for r in evals]
    for key, name in (("stsb", "STS-B"), ("sickr", "SICK-R"), ("avg", "avg")):
        values = [_num(r.get(key)) for r in evals]
        if any(not math.isnan(v) for v in values):
            ax_sts.plot(e_steps, values, marker="o", ms=3, lw=1, label=name)
    ax_sts.set_title("STS Spearman (eval)", fontsize=10)
    if ax_sts.get_legend_handles_labels()[0]:  # a run without evaluations has none to name
        ax_sts.legend(fontsize=8)
    else:
        ax_sts.text(0.5, 0.5, "no evaluation", ha="center", va="center", transform=ax_sts.transAxes)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return save_png(fig, path)


def alignment_uniformity(points: Sequence[tuple[int, float, float]], path, note: str = "") -> Path:
    """SimCSE's figure 2: (uniformity, alignment) of each evaluated step, an arrow in training
    order, colour = step; lower-left is better on both axes. ``note``: a second title line saying
    what was measured (e.g. the sample of pairs)."""
    fig = _figure(5.2, 4.2)
    ax = fig.add_subplot()
    steps = np.array([p[0] for p in points], dtype=np.float64)
    align = np.array([p[1] for p in points])
    unif = np.array([p[2] for p in points])
    for i in range(len(points) - 1):
        ax.annotate(
            "",
            xy=(unif[i + 1], align[i + 1]),
            xytext=(unif[i], align[i]),
            arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.8},
        )
    sc = ax.scatter(unif, align, c=steps, cmap="viridis", s=30, zorder=3)
    fig.colorbar(sc, ax=ax, label="step")
    ax.set_xlabel(r"$\ell_{uniform}$ (lower is more uniform)")
    ax.set_ylabel(r"$\ell_{align}$ (lower is better aligned)")
    title = "alignment / uniformity on STS-B dev"
    ax.set_title(f"{title}\n{note}" if note else title, fontsize=10 if not note else 8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def eval_plots(
    results: Mapping[str, Any],
    scores: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    folder: str | os.PathLike,
) -> list[Path]:
    """``contrasent eval --plots DIR``: ``sts-<task>.png`` per STS task (the test split of STS-B
    and SICK-R, or dev in dev mode) and ``similarity-distribution.png`` when STS-B diagnostics
    exist. Returns the files written."""
    from contrasent.data.senteval import SPLIT_TASKS
    from contrasent.eval.sts import SUMMARY

    folder = Path(folder)
    dev = results.get("mode") == "dev"
    written = []
    for task, parts in scores.items():
        shown = dict(parts)
        if task in SPLIT_TASKS:  # one split: the one in the table
            shown = {"dev": parts["dev"]} if dev else {"test": parts["test"]}
        column = "dev" if dev else SUMMARY[task]
        rho = results["tasks"][task]["spearman"].get(column)
        written.append(sts_scatter(task, shown, rho, folder / f"sts-{task}.png"))
    diag = results.get("diagnostics")
    if diag:
        label = f"STS-B {diag['split']}"
        written.append(
            similarity_distribution(
                {label: diag["similarity"]}, folder / "similarity-distribution.png"
            )
        )
    return written
