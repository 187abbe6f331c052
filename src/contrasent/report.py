"""``contrasent report RUN_DIR``: one shareable ``report.html`` (plus its PNGs) for a training run.

Reads only files (it never imports the training code): ``config.json`` (the recipe),
``metrics.jsonl`` (train and eval records, see ``contrasent.train.metrics``), the optional
``eval/*.json`` written by ``contrasent eval --output RUN_DIR/eval/NAME.json`` (full STS +
transfer tables), and, with ``from_checkpoints``, ``checkpoints/step-*/trainable.pt``.

The alignment-uniformity trajectory (SimCSE's figure 2) comes from the ``alignment`` /
``uniformity`` each eval record carries (STS-B dev, measured on the embeddings the STS
evaluation computed anyway), so the report costs no encoding. Runs without those numbers (no
evaluation, older runs), or ``from_checkpoints=True``, embed STS-B dev with the checkpoints
instead: the encoder of ``final/`` (or ``best/``) gets each checkpoint's ``encoder.*`` weights.
That is bounded (:class:`TrajectoryLimits`): a fixed sample of the pairs, a few checkpoints, and
a time budget estimated before any checkpoint is embedded; the plot says what it measured.

Output: ``RUN_DIR/report/report.html`` with the PNGs embedded (one file to share) and the same
PNGs beside it.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import UserError, where
from contrasent.core.fileio import atomic_write_text

log = logging.getLogger(__name__)
REPORT_DIR = "report"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl``; a line cut by a kill (the last one) is skipped."""
    records = []
    if not path.is_file():
        return records
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):
                log.warning("%s: last line is incomplete (run killed?); skipped", where(path, i))
                continue
            raise UserError(f"{where(path, i)}: not valid JSON") from None
    return records


def _trajectory_from_metrics(evals: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    return [
        (r["step"], float(r["alignment"]), float(r["uniformity"]))
        for r in evals
        if isinstance(r.get("alignment"), (int, float))
        and isinstance(r.get("uniformity"), (int, float))
    ]


@dataclass(frozen=True)
class TrajectoryLimits:
    """What the checkpoint trajectory may cost: the report runs after every training run, and a
    110M model on a busy CPU embeds a few sentences a second (all of STS-B dev at every
    checkpoint took ~15 minutes with MPNet there)."""

    pairs: int = 256  # STS-B dev pairs embedded per checkpoint: a fixed sample (0: all 1,500)
    checkpoints: int = 6  # checkpoints embedded, evenly spread, first and last kept (0: all)
    budget_s: float = 60.0  # estimated seconds allowed: fewer checkpoints, or a skip (0: no limit)


@dataclass
class Trajectory:
    """(step, alignment, uniformity) points and the line that says what they were measured on
    (or why there are none)."""

    points: list[tuple[int, float, float]] = field(default_factory=list)
    note: str = ""


def sample_pairs(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed random sample of ``k`` of ``n`` pairs (all when ``k`` is 0 or
    >= ``n``): the same sample at every checkpoint and in every report."""
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def spread(n: int, k: int) -> list[int]:
    """Indices of ``k`` of ``n`` items evenly spread, the first and the last included."""
    if k <= 0 or k >= n:
        return list(range(n))
    if k == 1:
        return [n - 1]  # the trained end of the run
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def affordable(wanted: int, per_checkpoint_s: float, budget_s: float, spent_s: float) -> int:
    """How many of ``wanted`` checkpoints fit in what is left of the budget (``budget_s`` 0:
    all); 0 when fewer than two would (one point is no trajectory), unless one is all there is."""
    if budget_s <= 0:
        return wanted
    fit = int((budget_s - spent_s) // max(per_checkpoint_s, 1e-9))
    fit = min(wanted, max(fit, 0))
    return fit if fit >= min(2, wanted) else 0


def _seconds_per_checkpoint(encoder: Any, sentences: list[str]) -> float:
    """Estimated seconds to embed ``sentences``: one batch of the 32 of median length, after a
    warm-up call (a first call, or small batches on a busy CPU, cost several times more per
    sentence than the length-sorted batches of 128 that follow; measured on MiniLM: 20-25 s
    estimated, 14 s taken)."""
    by_length = sorted(sentences, key=len)
    mid = len(by_length) // 2
    probe = by_length[max(mid - 16, 0) : mid + 16]
    encoder.encode(probe[:2], batch_size=2)
    start = time.perf_counter()
    encoder.encode(probe, batch_size=len(probe))
    return (time.perf_counter() - start) / len(probe) * len(sentences)


def checkpoint_trajectory(
    run_dir: Path, data_dir: str | None, limits: TrajectoryLimits | None = None
) -> Trajectory:
    """(step, alignment, uniformity) on a fixed sample of STS-B dev pairs for up to
    ``limits.checkpoints`` checkpoints of the run, within ``limits.budget_s`` (estimated from the
    time the saved model takes to embed a few of the sentences)."""
    import re

    import torch

    from contrasent.data.senteval import read_stsb, resolve_data_dir
    from contrasent.eval.diagnostics import alignment_uniformity
    from contrasent.eval.sts import embed_unique
    from contrasent.model.encoder import Encoder

    limits = limits or TrajectoryLimits()
    base = next(
        (run_dir / n for n in ("final", "best") if (run_dir / n / "modules.json").is_file()), None
    )
    ckpts = sorted(
        p for p in (run_dir / "checkpoints").glob("step-*") if re.fullmatch(r"step-\d+", p.name)
    )
    if base is None or not ckpts:
        return Trajectory()
    start = time.perf_counter()
    encoder = Encoder.from_pretrained(str(base), device="cpu")
    pairs = read_stsb(resolve_data_dir(data_dir), "dev")
    keep = sample_pairs(len(pairs.gold), limits.pairs)
    s1, s2, gold = [pairs.s1[i] for i in keep], [pairs.s2[i] for i in keep], pairs.gold[keep]
    sentences = sorted(set(s1 + s2))
    per_ckpt = _seconds_per_checkpoint(encoder, sentences)
    chosen = [ckpts[i] for i in spread(len(ckpts), limits.checkpoints)]
    fit = affordable(len(chosen), per_ckpt, limits.budget_s, time.perf_counter() - start)
    what = f"{len(keep)} of {len(pairs.gold)} STS-B dev pairs, a fixed sample"
    if fit == 0:
        note = (
            f"trajectory skipped: {len(chosen)} checkpoints x ~{per_ckpt:.0f} s each ({what}) is "
            f"over the {limits.budget_s:g} s budget; contrasent report --trajectory_budget 0 "
            "draws it"
        )
        log.warning("%s: %s", run_dir, note)
        return Trajectory(note=note)
    chosen = [chosen[i] for i in spread(len(chosen), fit)]
    points = []
    for ckpt in chosen:
        state = torch.load(ckpt / "trainable.pt", map_location="cpu", weights_only=True)
        weights = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        try:
            encoder.load_state_dict(weights)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(
                f"{ckpt / 'trainable.pt'}: does not fit the encoder of {base}: {first}"
            ) from e
        index, emb = embed_unique(lambda t: encoder.encode(t, batch_size=128), sentences, 128)
        a, b = emb[[index[s] for s in s1]], emb[[index[s] for s in s2]]
        diag = alignment_uniformity(a, b, gold, emb)
        points.append((int(ckpt.name.split("-")[1]), diag["alignment"], diag["uniformity"]))
        log.info("%s: alignment %.4f uniformity %.4f", ckpt.name, *points[-1][1:])
    note = f"{what}, {len(chosen)} of {len(ckpts)} checkpoints"
    log.info("trajectory: %s, %.0f s", note, time.perf_counter() - start)
    return Trajectory(points, note)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(alt)
    img = f'<img alt="{alt}" src="data:image/png;base64,{data}">'
    return f"<figure>{img}<figcaption>{alt}</figcaption></figure>"


def _html_table(names: list[str], values: list[Any]) -> str:
    head = "".join(f"<th>{html.escape(str(n))}</th>" for n in names)
    cells = "".join("<td>-</td>" if v is None else f"<td>{v:.2f}</td>" for v in values)
    return f"<table><tr>{head}</tr><tr>{cells}</tr></table>"


def _sts_html(results: dict[str, Any]) -> str:
    from contrasent.eval.tables import summary_row

    row = summary_row(results)
    return _html_table(list(row), list(row.values()))


def _transfer_html(results: dict[str, Any]) -> str:
    from contrasent.eval.transfer import summary_row

    row = summary_row(results)
    return _html_table(list(row), list(row.values()))


def _eval_files(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((run_dir / "eval").glob("*.json")):
        try:
            out.append((path.stem, json.loads(path.read_text(encoding="utf-8"))))
        except json.JSONDecodeError as e:
            raise UserError(f"{where(path, e.lineno)}: not valid JSON ({e.msg})") from None
    return out


def _own_html(results: dict[str, Any]) -> list[str]:
    """One table per kind of the user's task files: a row per task, a column per metric."""
    from contrasent.core.results import own_task_tables

    parts = []
    for kind, (names, body) in own_task_tables([(None, results)]).items():
        head = "".join(f"<th>{html.escape(n)}</th>" for n in ["task", *names])
        digits = 2 if kind == "sts" else 4
        rows = "".join(
            f"<tr><td>{html.escape(label)}</td>"
            + "".join("<td>-</td>" if v is None else f"<td>{v:.{digits}f}</td>" for v in values)
            + "</tr>"
            for label, values in body
        )
        parts += [f"<p>{html.escape(kind)}</p>", f"<table><tr>{head}</tr>{rows}</table>"]
    return parts


def _results_section(label: str, results: dict[str, Any]) -> list[str]:
    parts = [f"<h3>{html.escape(label)}</h3>"]
    parts += _own_html(results)
    if "avg" in results:  # STS tasks were evaluated
        parts += [
            f"<p>STS ({html.escape(str(results.get('mode')))} mode, Spearman x100)</p>",
            _sts_html(results),
        ]
    if "transfer" in results:
        tr = results["transfer"]
        parts += [
            f"<p>Transfer ({html.escape(tr['mode'])} mode, accuracy x100)</p>",
            _transfer_html(tr),
        ]
    diag = results.get("diagnostics")
    if diag and diag.get("alignment") is not None:
        parts.append(
            f"<p>alignment {diag['alignment']:.4f}, uniformity {diag['uniformity']:.4f} "
            f"(STS-B {diag['split']})</p>"
        )
    return parts


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #bbb;padding:.25em .6em;text-align:center}
th{background:#f0f0f0}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
img{max-width:100%}figure{margin:1em 0}figcaption{color:#666;font-size:.9em}"""


def _figures(
    run: Path,
    train: list[dict],
    evals: list[dict],
    config: dict,
    from_ckpt: bool,
    data_dir,
    limits: TrajectoryLimits | None = None,
) -> tuple[list[tuple[Path, str]], str]:
    """Write the run's PNGs into ``run/report``: (path, caption) of each, and the line saying
    why the checkpoint trajectory was skipped ("" if it was not)."""
    from contrasent.eval import plots

    out = run / REPORT_DIR
    figures: list[tuple[Path, str]] = []
    if train or evals:
        path = plots.training_curves(train, evals, out / "curves.png")
        figures.append((path, "loss, learning rate and the evaluation during training"))
    traj = Trajectory([] if from_ckpt else _trajectory_from_metrics(evals))
    caption = "alignment vs uniformity (STS-B dev), one point per evaluation"
    if not traj.points:
        data_dir = data_dir or (config.get("eval") or {}).get("data_dir")
        traj = checkpoint_trajectory(run, data_dir, limits)
        caption = f"alignment vs uniformity, one point per checkpoint: {traj.note}"
    if traj.points:
        path = plots.alignment_uniformity(traj.points, out / "alignment-uniformity.png", traj.note)
        figures.append((path, caption))
    ends = {"before": evals[0]} if evals else {}
    if len(evals) > 1:
        ends["after"] = evals[-1]
    sims = {
        f"{label} (step {rec['step']})": rec["results"]["diagnostics"]["similarity"]
        for label, rec in ends.items()
        if ((rec.get("results") or {}).get("diagnostics") or {}).get("similarity")
    }
    if sims:
        path = plots.similarity_distribution(sims, out / "similarity-distribution.png")
        figures.append((path, "cosine similarity of STS-B dev pairs by gold score"))
    return figures, "" if traj.points else traj.note


def _body(run: Path, train: list[dict], evals: list[dict], config: dict) -> list[str]:
    """The report's sections before the plots: the run, STS before/after, eval/*.json."""
    body = []
    if config:
        model = html.escape(str((config.get("model") or {}).get("name_or_path")))
        objective = html.escape(str((config.get("objective") or {}).get("name")))
        body.append(
            f"<p>model <code>{model}</code>, objective <code>{objective}</code>, "
            f"{len(train)} train records, {len(evals)} evaluations</p>"
        )
    if evals:
        last = evals[-1]
        body.append("<h2>Evaluation during training</h2>")
        if last.get("best") is not None:
            body.append(
                f"<p>best selection metric {last['best']:.2f} at step {last.get('best_step')}</p>"
            )
        body += _results_section(f"before (step {evals[0]['step']})", evals[0]["results"])
        if len(evals) > 1:
            body += _results_section(f"after (step {last['step']})", last["results"])
    extra = _eval_files(run)
    if extra:
        body.append("<h2>Evaluations</h2>")
        for name, results in extra:
            body += _results_section(name, results)
    return body


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """``run_dir`` as a Path when it is a training run folder (has ``config.json`` or
    ``metrics.jsonl``); else a UserError saying what it is (a staged run names its stages)."""
    run = Path(run_dir)
    if not run.exists():
        raise UserError(f"run folder {run} does not exist")
    if not run.is_dir():
        raise UserError(f"{run} is a file, not a training run folder")
    if (run / "modules.json").is_file() or (run / "contrasent_config.json").is_file():
        raise UserError(
            f"{run} is a saved model, not a training run folder (the run is the folder "
            "holding final/, metrics.jsonl and config.json)"
        )
    if not (run / "config.json").is_file() and not (run / "metrics.jsonl").is_file():
        stages = sorted(p.name for p in run.glob("stage-*") if (p / "metrics.jsonl").is_file())
        hint = f"; a staged run: report a stage, e.g. {run / stages[0]}" if stages else ""
        raise UserError(
            f"{run} is not a training run folder (no config.json, no metrics.jsonl){hint}"
        )
    return run


def build_report(
    run_dir: str | os.PathLike,
    from_checkpoints: bool = False,
    data_dir: str | None = None,
    limits: TrajectoryLimits | None = None,
) -> Path:
    """Write ``run_dir/report/report.html`` and its PNGs; returns the HTML path.

    ``from_checkpoints``: compute the alignment-uniformity trajectory by embedding STS-B dev with
    the checkpoints (needs ``final/`` or ``best/`` and the STS data) instead of reading it from
    metrics.jsonl; it is also the fallback when metrics.jsonl has no such numbers. ``data_dir``:
    the STS data for that (default: the recipe's ``eval.data_dir``, else ``$CONTRASENT_DATA``).
    ``limits``: the pairs, checkpoints and estimated seconds that trajectory may take
    (default :class:`TrajectoryLimits`: a minute at most; the plot says what was measured).
    """
    import yaml

    run = check_run_dir(run_dir)
    cfg_path, metrics_path = run / "config.json", run / "metrics.jsonl"
    config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    figures, skipped = _figures(run, train, evals, config, from_checkpoints, data_dir, limits)
    title = html.escape(f"contrasent run {run.resolve().name}")
    body = [f"<h1>{title}</h1>", *_body(run, train, evals, config), "<h2>Plots</h2>"]
    body += [_img(p, alt) for p, alt in figures] or ["<p>no training records to plot</p>"]
    body += [f"<p>{html.escape(skipped)}</p>"] if skipped else []
    if config:
        recipe = html.escape(yaml.safe_dump(config, sort_keys=False))
        body += ["<h2>Recipe</h2>", f"<pre>{recipe}</pre>"]
    head = f"<meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
    page = f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>\n"
    path = run / REPORT_DIR / "report.html"
    atomic_write_text(path, page)
    return path


def build_compare_report(folder: str | os.PathLike, table: str, pngs: list[Path]) -> Path:
    """``folder/report.html`` of a ``contrasent compare``: its Markdown table (``table``, as
    :mod:`contrasent.train.compare_table` writes it) and PNGs, embedded in one page."""
    out = Path(folder)
    lines = table.splitlines()
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in lines
        if line.startswith("|") and not line.startswith("|---")
    ]

    def cell(text: str, tag: str) -> str:
        bold = text.startswith("**") and text.endswith("**")
        text = html.escape(text.strip("*") if bold else text)
        return f"<{tag}>{f'<b>{text}</b>' if bold else text}</{tag}>"

    body = "".join(
        "<tr>" + "".join(cell(c, "th" if i == 0 else "td") for c in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    notes = "".join(f"<p>{html.escape(line)}</p>" for line in lines if line and line[0] != "|")
    title = html.escape(f"contrasent compare {out.resolve().name}")
    parts = [f"<h1>{title}</h1>", f"<table>{body}</table>", notes]
    parts += [_img(p, p.stem) for p in pngs]
    head = f"<meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
    page = f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>\n"
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
