"""SentEval's three validation schemes for the transfer tasks (its tools/validation.py), on the
batched classifier of :mod:`contrasent.eval.classifier`, with its rounding: grid scores and
cross-validated means through numpy's round, single accuracies through Python's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from contrasent.eval.classifier import ClassifierConfig, Fit, FitResult, train_logreg


def _np_round(x: float) -> float:
    return float(np.round(np.float64(x), 2))


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """SentEval's ``StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)`` splits."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(y)), y))


def select_l2(scores: Sequence[float], grid: Sequence[float]) -> tuple[float, float]:
    """(best L2, its score): the first maximum, i.e. the smaller L2 on a tie (``np.argmax``)."""
    i = int(np.argmax(scores))
    return grid[i], scores[i]


def _predict(X: Tensor, rows: np.ndarray, res: FitResult) -> np.ndarray:
    return (X[torch.from_numpy(rows)] @ res.weight.T + res.bias).argmax(-1).numpy()


def _accuracy(X: Tensor, y: Tensor, rows: np.ndarray, res: FitResult) -> float:
    return float((_predict(X, rows, res) == y[torch.from_numpy(rows)].numpy()).mean())


def _fit_summary(res: FitResult) -> dict:
    return {
        "dev_accuracy": 100 * res.dev_accuracy,
        "epochs": res.epochs,
        "best_epoch": res.best_epoch,
    }


def inner_kfold(
    X: Tensor, y: Tensor, nclasses: int, cfg: ClassifierConfig, with_test: bool = True
) -> dict:
    """MR, CR, SUBJ, MPQA: k outer folds; in each, the L2 chosen by inner k-fold CV on the
    outer train part, then one fit on it (5% carved out for early stopping), tested on the
    outer fold. ``devacc`` = mean over outer folds of the best inner-CV score."""
    labels = y.numpy()
    outer = stratified_folds(labels, cfg.kfold, cfg.seed)
    fits, plan = [], []
    for tr, _ in outer:
        inner = stratified_folds(labels[tr], cfg.kfold, cfg.seed)
        for l2 in cfg.l2_grid:
            for itr, ite in inner:
                fits.append(Fit(tr[itr], l2, tr[ite]))
                plan.append(l2)
    results = iter(train_logreg(X, y, fits, nclasses, cfg))
    folds = []
    for tr, te in outer:
        grid = [
            _np_round(100 * np.mean([next(results).dev_accuracy for _ in range(cfg.kfold)]))
            for _ in cfg.l2_grid
        ]
        l2, score = select_l2(grid, cfg.l2_grid)
        folds.append(
            {"n_train": len(tr), "n_test": len(te), "grid": grid, "l2": l2, "devacc": score}
        )
    out = {"devacc": _np_round(np.mean([f["devacc"] for f in folds])), "folds": folds}
    if with_test:
        finals = train_logreg(
            X, y, [Fit(tr, f["l2"]) for (tr, _), f in zip(outer, folds, strict=True)], nclasses, cfg
        )
        for (_, te), f, res in zip(outer, folds, finals, strict=True):
            f["acc"] = round(100 * _accuracy(X, y, te, res), 2)
            f["final_fit"] = _fit_summary(res)
        out["acc"] = _np_round(np.mean([f["acc"] for f in folds]))
    return out


def kfold(
    X: Tensor,
    y: Tensor,
    n_train: int,
    nclasses: int,
    cfg: ClassifierConfig,
    with_test: bool = True,
) -> dict:
    """TREC, MRPC: the L2 chosen by k-fold CV on the train rows (the first ``n_train`` of ``X``),
    then one fit on all of them (5% carved out for early stopping), tested on the rest."""
    labels = y[:n_train].numpy()
    folds = stratified_folds(labels, cfg.kfold, cfg.seed)
    fits = [Fit(tr, l2, te) for l2 in cfg.l2_grid for tr, te in folds]
    results = train_logreg(X, y, fits, nclasses, cfg)
    k = cfg.kfold
    grid = [
        _np_round(100 * np.mean([r.dev_accuracy for r in results[i * k : (i + 1) * k]]))
        for i in range(len(cfg.l2_grid))
    ]
    l2, score = select_l2(grid, cfg.l2_grid)
    out: dict = {"devacc": score, "grid": grid, "l2": l2}
    if with_test:
        (final,) = train_logreg(X, y, [Fit(np.arange(n_train), l2)], nclasses, cfg)
        test = np.arange(n_train, len(y))
        pred = _predict(X, test, final)
        out["acc"] = round(100 * float((pred == y[n_train:].numpy()).mean()), 2)
        out["pred"] = pred
        out["final_fit"] = _fit_summary(final)
    return out


def split(
    X: Tensor,
    y: Tensor,
    rows: dict[str, np.ndarray],
    nclasses: int,
    cfg: ClassifierConfig,
    with_test: bool = True,
) -> dict:
    """SST2, SICK-E: one fit per L2 on ``rows["train"]`` early-stopped on ``rows["dev"]``; the
    best dev accuracy picks the L2. SentEval then refits that L2 with the same seed and data,
    which gives the same model, so the search's fit is tested directly."""
    fits = [Fit(rows["train"], l2, rows["dev"]) for l2 in cfg.l2_grid]
    results = train_logreg(X, y, fits, nclasses, cfg)
    grid = [round(100 * r.dev_accuracy, 2) for r in results]
    l2, score = select_l2(grid, cfg.l2_grid)
    out: dict = {"devacc": score, "grid": grid, "l2": l2}
    best = results[cfg.l2_grid.index(l2)]
    out["final_fit"] = _fit_summary(best)
    if with_test:
        out["acc"] = round(100 * _accuracy(X, y, rows["test"], best), 2)
    return out
