"""SentEval classifier protocol: the batched trainer against a plain SentEval-style loop, and the
protocol pieces (folds, carve-out, L2 choice, early stopping, rounding) against hand computations."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from contrasent.eval import classifier as clf
from contrasent.eval import protocols
from contrasent.eval.classifier import (
    PRESETS,
    EarlyStopping,
    Fit,
    initial_linear,
    train_logreg,
)
from contrasent.eval.protocols import select_l2, stratified_folds

# ----------------------------------------------------------------------------- reference


@pytest.fixture(autouse=True)
def one_thread():
    """The reference loop is thousands of tiny ops: one thread (as the library uses)."""
    with clf.torch_threads(1):
        yield


def senteval_fit(X, y, nclasses, l2, cfg, dev=None):
    """SentEval's ``MLP(nhid=0).fit`` (tools/classifier.py) written out plainly on CPU: global
    seeding, nn.Linear, torch.optim with weight_decay set on the param group, CrossEntropyLoss
    (mean), a 5% carve-out when no dev set is given, early stopping with the never-reset counter.
    Returns (best model, best dev accuracy, epochs run, best epoch)."""
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = nn.Sequential(nn.Linear(X.shape[1], nclasses))
    optim = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[cfg.optim]
    opt = optim(model.parameters())
    opt.param_groups[0]["weight_decay"] = l2
    loss_fn = nn.CrossEntropyLoss()
    if dev is None:
        perm = np.random.permutation(len(X))
        cut = int(cfg.validation_split * len(X))
        trX, trY, dX, dY = X[perm[cut:]], y[perm[cut:]], X[perm[:cut]], y[perm[:cut]]
    else:
        (trX, trY), (dX, dY) = (X, y), dev
    trX, trY, dX, dY = map(torch.as_tensor, (trX, trY, dX, dY))
    nepoch, best, stop, count, epochs, best_epoch = 0, -1.0, False, 0, 0, 0
    while not stop and nepoch <= cfg.max_epoch:
        for _ in range(cfg.epoch_size):
            perm = np.random.permutation(len(trX))
            for i in range(0, len(trX), cfg.batch_size):
                idx = torch.from_numpy(perm[i : i + cfg.batch_size]).long()
                loss = loss_fn(model(trX[idx]), trY[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        nepoch += cfg.epoch_size
        epochs += 1
        with torch.no_grad():
            acc = 1.0 * int((model(dX).argmax(1) == dY).sum()) / len(dX)
        if acc > best:
            best, best_model, best_epoch = acc, copy.deepcopy(model), epochs
        else:
            if count >= cfg.tenacity:
                stop = True
            count += 1
    return best_model, best, epochs, best_epoch


def toy(n=420, d=12, c=3, seed=0):
    rs = np.random.RandomState(seed)
    X = rs.randn(n, d).astype(np.float32)
    y = (X @ rs.randn(d, c) + 2.0 * rs.randn(n, c)).argmax(1).astype(np.int64)
    return X, y


# ----------------------------------------------------------------------------- trainer


@pytest.mark.parametrize("mode", ["fasttest", "test"])
def test_batched_fits_equal_senteval_loop(mode: str) -> None:
    X, y = toy()
    cfg = replace(PRESETS[mode], batch_size=32)
    dev = np.arange(300, 420)
    fits = [
        Fit(np.arange(300), 1e-5, dev),
        Fit(np.arange(0, 273), 1e-2, dev),  # fewer rows: its last batch comes a step earlier
        Fit(np.arange(300), 1e-3),  # 5% carved out as dev
        Fit(np.arange(41, 300), 1e-4),
    ]
    ours = train_logreg(torch.from_numpy(X), torch.from_numpy(y), fits, 3, cfg)
    for fit, res in zip(fits, ours, strict=True):
        d = None if fit.dev is None else (X[fit.dev], y[fit.dev])
        model, best, epochs, best_epoch = senteval_fit(
            X[fit.train], y[fit.train], 3, fit.l2, cfg, d
        )
        assert res.dev_accuracy == best
        assert (res.epochs, res.best_epoch) == (epochs, best_epoch)
        torch.testing.assert_close(res.weight, model[0].weight.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(res.bias, model[0].bias.detach(), atol=1e-5, rtol=0)


def test_initial_linear_is_seeded_nn_linear_and_keeps_global_rng() -> None:
    before = torch.get_rng_state()
    w, b = initial_linear(7, 3, 1111)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(1111)
    ref = nn.Linear(7, 3)
    assert torch.equal(w, ref.weight.detach()) and torch.equal(b, ref.bias.detach())


def test_carve_out_takes_first_five_percent_of_seeded_permutation() -> None:
    train = np.arange(100, 160)  # 60 rows -> int(0.05 * 60) = 3 dev rows
    tr, dev = clf._carve(Fit(train, 1e-5), np.random.RandomState(1111), 0.05)
    perm = np.random.RandomState(1111).permutation(60)
    assert dev.tolist() == (100 + perm[:3]).tolist()
    assert tr.tolist() == (100 + perm[3:]).tolist()


# ----------------------------------------------------------------------------- protocol pieces


def test_early_stopping_counter_is_never_reset() -> None:
    stop = EarlyStopping(tenacity=2)
    trace = []
    for acc in [0.5, 0.6, 0.6, 0.7, 0.65, 0.8, 0.7, 0.9, 0.9]:
        trace.append((stop.update(acc), stop.stopped))
        if stop.stopped:
            break
    # non-improvements at epochs 3, 5, 7 (counter 0, 1, 2); the third one (7) sees count == 2
    assert trace == [(True, False), (True, False), (False, False), (True, False),
                     (False, False), (True, False), (False, True)]  # fmt: skip
    assert stop.best == 0.8


def test_stratified_folds_keep_class_ratio_and_partition() -> None:
    y = np.array([0] * 10 + [1] * 5)
    folds = stratified_folds(y, 5, 1111)
    assert len(folds) == 5
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(15))
    for tr, te in folds:
        assert np.bincount(y[te]).tolist() == [2, 1]
        assert set(tr) | set(te) == set(range(15)) and not set(tr) & set(te)
    # the seed decides the shuffle (SentEval: random_state=1111)
    other = stratified_folds(y, 5, 1112)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))


def test_select_l2_first_maximum_after_rounding() -> None:
    grid = (1e-5, 1e-4, 1e-3, 1e-2)
    assert select_l2([80.12, 80.5, 80.5, 79.0], grid) == (1e-4, 80.5)
    # SentEval rounds the CV means to 2 decimals before the argmax: 80.004 and 80.001 tie
    scores = [protocols._np_round(x) for x in (80.001, 80.004, 79.99, 70.0)]
    assert select_l2(scores, grid) == (1e-5, 80.0)


def test_inner_kfold_equals_senteval_nested_loop() -> None:
    """validation.py's InnerKFoldClassifier written out with the reference fit, on toy data."""
    X, y = toy(n=150, d=6, c=2, seed=3)
    cfg = replace(PRESETS["fasttest"], kfold=3, batch_size=16, l2_grid=(1e-5, 1e-2))
    ours = protocols.inner_kfold(torch.from_numpy(X), torch.from_numpy(y), 2, cfg)
    dev_results, test_results = [], []
    for tr, te in stratified_folds(y, 3, cfg.seed):
        grid = []
        for l2 in cfg.l2_grid:
            accs = [
                senteval_fit(X[tr][a], y[tr][a], 2, l2, cfg, (X[tr][b], y[tr][b]))[1]
                for a, b in stratified_folds(y[tr], 3, cfg.seed)
            ]
            grid.append(round(100 * np.mean(accs), 2))
        best = cfg.l2_grid[int(np.argmax(grid))]
        dev_results.append(max(grid))
        model = senteval_fit(X[tr], y[tr], 2, best, cfg)[0]
        with torch.no_grad():
            pred = model(torch.from_numpy(X[te])).argmax(1).numpy()
        test_results.append(round(100 * float((pred == y[te]).mean()), 2))
    assert [f["grid"] for f in ours["folds"]] != []
    assert ours["devacc"] == round(np.mean(dev_results), 2)
    assert ours["acc"] == round(np.mean(test_results), 2)


def test_kfold_and_split_choose_l2_by_cv_and_dev() -> None:
    X, y = toy(n=200, d=5, c=2, seed=5)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    cfg = replace(PRESETS["fasttest"], kfold=3, batch_size=16, l2_grid=(1e-5, 1e-1))
    res = protocols.kfold(Xt, yt, 150, 2, cfg)
    grid = []
    for l2 in cfg.l2_grid:
        accs = [
            senteval_fit(X[a], y[a], 2, l2, cfg, (X[b], y[b]))[1]
            for a, b in stratified_folds(y[:150], 3, cfg.seed)
        ]
        grid.append(round(100 * np.mean(accs), 2))
    assert res["grid"] == grid and res["l2"] == cfg.l2_grid[int(np.argmax(grid))]
    final = senteval_fit(X[:150], y[:150], 2, res["l2"], cfg)[0]
    with torch.no_grad():
        pred = final(Xt[150:]).argmax(1).numpy()
    assert res["acc"] == round(100 * float((pred == y[150:]).mean()), 2)

    rows = {"train": np.arange(120), "dev": np.arange(120, 160), "test": np.arange(160, 200)}
    res = protocols.split(Xt, yt, rows, 2, cfg)
    devs = [
        senteval_fit(X[:120], y[:120], 2, l2, cfg, (X[120:160], y[120:160])) for l2 in cfg.l2_grid
    ]
    assert res["grid"] == [round(100 * d[1], 2) for d in devs]
    model = devs[int(np.argmax(res["grid"]))][0]
    with torch.no_grad():
        pred = model(Xt[160:]).argmax(1).numpy()
    assert res["acc"] == round(100 * float((pred == y[160:]).mean()), 2)


def test_dev_mode_skips_final_fits() -> None:
    X, y = toy(n=120, d=4, c=2, seed=1)
    cfg = replace(PRESETS["dev"], kfold=3, l2_grid=(1e-5,))
    res = protocols.inner_kfold(torch.from_numpy(X), torch.from_numpy(y), 2, cfg, with_test=False)
    assert "acc" not in res and res["devacc"] > 50
