"""Figures are written without a display: files exist, are PNGs, and there are as many as asked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contrasent.eval import plots
from contrasent.eval.diagnostics import similarity_distribution
from contrasent.eval.sts import score_sts

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def length_encode(texts):
    return np.array([[len(t), t.count(" ") + 1.0, sum(map(ord, t)) % 17 + 1.0] for t in texts])


def test_eval_plots_one_per_sts_task_plus_distribution(monkeypatch, senteval_dir, tmp_path) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    results, scores = score_sts(
        length_encode, senteval_dir, "test", "sts13,stsb,sickr", diagnostics=True
    )
    written = plots.eval_plots(results, scores, tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "sts-STS13.png",
            "sts-STSBenchmark.png",
            "sts-SICKRelatedness.png",
            "similarity-distribution.png",
        ]
    )
    assert all(is_png(p) for p in written)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == names  # no temp files left


def test_run_figures(tmp_path) -> None:
    train = [{"step": s, "loss": 1.0 / s, "lr": 1e-5 * s} for s in range(1, 30)]
    evals = [{"step": s, "stsb": 70 + s / 10, "sickr": 60.0, "avg": None} for s in (0, 10, 20)]
    assert is_png(plots.training_curves(train, evals, tmp_path / "c.png"))
    points = [(0, 0.5, -1.0), (10, 0.3, -2.0), (20, 0.25, -2.6)]
    assert is_png(plots.alignment_uniformity(points, tmp_path / "au.png"))
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 400)
    sims = {
        "before": similarity_distribution(gold, 0.8 + 0.02 * gold / 5),
        "after": similarity_distribution(gold, gold / 5 - 0.1),
    }
    assert is_png(plots.similarity_distribution(sims, tmp_path / "sd.png"))


def test_outputs_get_the_usual_file_mode(tmp_path) -> None:
    """Written through temp files, but readable like any file the user writes (not 0600)."""
    from contrasent.core.fileio import atomic_write_text

    mask = os.umask(0)
    os.umask(mask)
    png = plots.alignment_uniformity([(0, 0.5, -1.0), (1, 0.4, -1.5)], tmp_path / "a.png")
    atomic_write_text(tmp_path / "r.json", "{}")
    assert png.stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~mask
