"""SentEval's logistic-regression protocol on frozen features, in torch, many fits at once.

This reproduces ``senteval/tools/classifier.py`` (``MLP`` with ``nhid=0``) and
``senteval/tools/validation.py`` (facebookresearch/SentEval), which SimCSE, DeCLUTR and most
sentence-embedding papers report:

* model: one ``nn.Linear(dim, nclasses)``, cross-entropy (mean over the batch: SentEval sets
  ``size_average = False`` after construction, which modern torch ignores), L2 as the optimizer's
  ``weight_decay`` on weight and bias, torch's default learning rates (RMSprop 0.01, Adam 1e-3);
* seeds: every classifier re-seeds numpy and torch with the same seed (1111), so each fit starts
  from the same initial weights and draws its own permutations from a fresh ``RandomState(seed)``:
  first the 5% validation carve-out (when it has no given dev set), then one permutation per pass;
* one "epoch" = ``epoch_size`` passes over the training rows, then dev accuracy. A strictly better
  accuracy keeps a copy of the model; otherwise a counter that is never reset grows, and the fit
  stops on the first non-improvement after ``tenacity`` earlier ones (or past ``max_epoch``
  passes). The best copy is the result;
* the L2 grid ``10^-5 .. 10^-2``; grid scores are rounded to 2 decimals (x100) before the argmax,
  ties go to the smaller L2, as in SentEval;
* folds: ``StratifiedKFold(shuffle=True, random_state=seed)``. (SentEval's InnerKFoldClassifier
  hard-codes 1111 there; this uses the configured seed, 1111 unless changed.)

Fits that SentEval runs one after another (every L2 x fold) are independent, so they run here in
lock-step: stacked weights ``[G, C, D + 1]`` (bias as the last column), one gathered batch per
fit per step, hand-written RMSprop/Adam updates (element-wise, so stacking changes nothing), and a
fit that has no rows left in a pass skips that step exactly as a shorter loop would.
The validation schemes that call it live in :mod:`contrasent.eval.protocols`.
``tests/test_classifier.py`` checks this against a plain ``nn.Linear`` + ``torch.optim`` loop
written like SentEval's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

OPTIMIZERS = {  # torch's defaults, which SentEval's "rmsprop" / "adam" strings select
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8},
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}
L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)  # SentEval's pytorch grid: 10**t for t in range(-5, -1)
GATHER_BUDGET = 1 << 24  # floats gathered at once when scoring (64 MB)
# The steps are many tiny kernels: one thread is fastest, and on a busy machine OpenMP's thread
# team waits for descheduled threads on every op (measured: CR fasttest 54 s on 2 threads under
# load 5, 2.3 s on 1).
THREADS = 1


@dataclass(frozen=True)
class ClassifierConfig:
    """SentEval classifier settings (defaults: SimCSE's "test" set)."""

    optim: str = "adam"
    batch_size: int = 64
    tenacity: int = 5
    epoch_size: int = 4
    max_epoch: int = 200
    kfold: int = 10
    seed: int = 1111
    l2_grid: tuple[float, ...] = L2_GRID
    validation_split: float = 0.05
    nhid: int = 0  # logistic regression; SentEval's MLP (nhid > 0) is not implemented

    def to_dict(self) -> dict:
        return {**asdict(self), "l2_grid": list(self.l2_grid), **OPTIMIZERS[self.optim]}


# SimCSE's evaluation.py: "test" = full mode; "dev" and "fasttest" = fast mode.
PRESETS = {
    "test": ClassifierConfig(),
    "fasttest": ClassifierConfig(
        optim="rmsprop", batch_size=128, tenacity=3, epoch_size=2, kfold=5
    ),
}
PRESETS["dev"] = PRESETS["fasttest"]


@dataclass
class Fit:
    """One classifier to train: rows of the feature matrix, its L2, its dev rows.

    ``dev`` None: carve ``validation_split`` of ``train`` out as dev, as SentEval's
    ``fit(..., validation_split=0.05)`` does (the final fit of a cross-validation)."""

    train: np.ndarray
    l2: float
    dev: np.ndarray | None = None


@dataclass
class FitResult:
    weight: Tensor  # [C, D], the best epoch's
    bias: Tensor  # [C]
    dev_correct: int  # correct dev predictions of the best epoch
    n_dev: int
    best_epoch: int  # 1-based count of epochs (of epoch_size passes) at the best copy
    epochs: int  # epochs trained before stopping
    extra: dict = field(default_factory=dict)

    @property
    def dev_accuracy(self) -> float:
        return self.dev_correct / self.n_dev if self.n_dev else 0.0


class EarlyStopping:
    """SentEval's rule: keep the best strictly-improving epoch; the counter of non-improvements
    is never reset, and the fit stops on the first non-improvement once it has reached
    ``tenacity``."""

    def __init__(self, tenacity: int) -> None:
        self.tenacity = tenacity
        self.best = -1.0
        self.count = 0
        self.stopped = False

    def update(self, score: float) -> bool:
        """Record one epoch's dev score; True when it is the new best."""
        if score > self.best:
            self.best = score
            return True
        if self.count >= self.tenacity:
            self.stopped = True
        self.count += 1
        return False


def initial_linear(dim: int, nclasses: int, seed: int) -> tuple[Tensor, Tensor]:
    """The ``nn.Linear`` weights SentEval starts from after ``torch.manual_seed(seed)``; the
    caller's global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(dim, nclasses)
    return layer.weight.detach().clone(), layer.bias.detach().clone()


class _Optimizer:
    """RMSprop / Adam (torch's update formulas) over stacked per-fit parameters with per-fit
    weight decay; ``step(sel, ...)`` updates only the fits in ``sel``."""

    def __init__(self, name: str, params: list[Tensor], l2: Tensor) -> None:
        self.name, self.hp = name, OPTIMIZERS[name]
        self.params = params
        self.l2 = l2  # [G]
        self.sq = [torch.zeros_like(p) for p in params]
        self.avg = [torch.zeros_like(p) for p in params] if name == "adam" else None
        self.t = torch.zeros(len(l2), dtype=torch.float64)

    def _wd(self, p: Tensor, sel: Tensor | None) -> Tensor:
        lam = self.l2 if sel is None else self.l2[sel]
        return lam.view(-1, *([1] * (p.dim() - 1))).to(p.dtype)

    def step(self, grads: list[Tensor], sel: Tensor | None = None) -> None:
        pick = (lambda x: x) if sel is None else (lambda x: x[sel])
        for k, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            p_s = pick(p)
            g = g + self._wd(g, sel) * p_s  # torch: grad.add(param, alpha=weight_decay)
            sq = pick(self.sq[k])
            if self.name == "rmsprop":
                sq = sq * self.hp["alpha"] + (1 - self.hp["alpha"]) * g * g
                new = p_s - self.hp["lr"] * g / (sq.sqrt() + self.hp["eps"])
            else:
                b1, b2 = self.hp["beta1"], self.hp["beta2"]
                t = pick(self.t) + 1
                avg = pick(self.avg[k]).lerp(g, 1 - b1)
                sq = sq * b2 + (1 - b2) * g * g
                shape = (-1, *([1] * (p.dim() - 1)))
                step_size = (self.hp["lr"] / (1 - b1**t)).to(p.dtype).view(shape)
                bc2 = (1 - b2**t).sqrt().to(p.dtype).view(shape)
                new = p_s - step_size * avg / (sq.sqrt() / bc2 + self.hp["eps"])
                self._put(self.avg[k], avg, sel)
            self._put(self.sq[k], sq, sel)
            self._put(p, new, sel)
        if self.name == "adam":
            if sel is None:
                self.t += 1
            else:
                self.t[sel] += 1

    @staticmethod
    def _put(dst: Tensor, value: Tensor, sel: Tensor | None) -> None:
        if sel is None:
            dst.copy_(value)
        else:
            dst[sel] = value


def _carve(fit: Fit, rs: np.random.RandomState, split: float) -> tuple[np.ndarray, np.ndarray]:
    train = np.asarray(fit.train, dtype=np.int64)
    if fit.dev is not None:
        return train, np.asarray(fit.dev, dtype=np.int64)
    perm = rs.permutation(len(train))
    cut = int(split * len(train))
    return train[perm[cut:]], train[perm[:cut]]


def _padded(rows: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """[G, max_len] row indices (padded with row 0) and their lengths."""
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width), dtype=np.int64)
    for g, r in enumerate(rows):
        out[g, : len(r)] = r
    return torch.from_numpy(out), torch.tensor([len(r) for r in rows])


def _gather(X: Tensor, rows: Tensor) -> Tensor:
    """``X[rows]`` for 2-D ``rows``; index_select is 2.4x faster than advanced indexing here."""
    return torch.index_select(X, 0, rows.reshape(-1)).view(*rows.shape, X.shape[1])


def count_correct(X: Tensor, y: Tensor, rows: Tensor, lengths: Tensor, weight: Tensor) -> Tensor:
    """Correct argmax predictions per fit over its rows (padded [G, L] with ``lengths``);
    ``X`` [N, D + 1] ends with the constant-1 column that ``weight`` [G, C, D + 1] biases."""
    width = rows.shape[1]
    chunk = max(1, GATHER_BUDGET // max(1, width * X.shape[1]))
    out = []
    valid = torch.arange(width) < lengths[:, None]
    for s in range(0, rows.shape[0], chunk):
        r = rows[s : s + chunk]
        logits = torch.bmm(_gather(X, r), weight[s : s + chunk].mT)
        hit = (logits.argmax(-1) == y[r]) & valid[s : s + chunk]
        out.append(hit.sum(1))
    return torch.cat(out)


def train_logreg(
    X: Tensor, y: Tensor, fits: Sequence[Fit], nclasses: int, cfg: ClassifierConfig
) -> list[FitResult]:
    """Train SentEval logistic regressions, one per ``fit``, on rows of ``X`` [N, D] (float32)
    with labels ``y`` [N] (int64); every fit starts from ``initial_linear(D, C, cfg.seed)``."""
    with torch_threads(THREADS):
        return _train_logreg(X, y, fits, nclasses, cfg)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _train_logreg(
    X: Tensor, y: Tensor, fits: Sequence[Fit], nclasses: int, cfg: ClassifierConfig
) -> list[FitResult]:
    if cfg.nhid != 0:
        raise NotImplementedError("only SentEval's nhid=0 (logistic regression) is implemented")
    G, D, bs = len(fits), X.shape[1], cfg.batch_size
    rngs = [np.random.RandomState(cfg.seed) for _ in fits]
    carved = [_carve(f, rs, cfg.validation_split) for f, rs in zip(fits, rngs, strict=True)]
    train_sizes = np.array([len(t) for t, _ in carved])
    dev_rows, dev_len = _padded([d for _, d in carved])
    # Bias as an extra weight column over a constant-1 feature: one parameter tensor, one matmul
    # (SentEval's weight decay covers the bias too, so the update is the same).
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
    w0, b0 = initial_linear(D, nclasses, cfg.seed)
    W = torch.cat([w0, b0[:, None]], dim=1).expand(G, -1, -1).clone()  # [G, C, D + 1]
    opt = _Optimizer(cfg.optim, [W], torch.tensor([f.l2 for f in fits], dtype=torch.float32))
    best_W = W.clone()
    stoppers = [EarlyStopping(cfg.tenacity) for _ in fits]
    best_correct, best_epoch, epochs_run = [0] * G, [0] * G, [0] * G
    live = np.arange(G)  # fits still training
    epoch, nepoch = 0, 0
    while len(live) and nepoch <= cfg.max_epoch:
        for _ in range(cfg.epoch_size):
            orders = [carved[g][0][rngs[g].permutation(train_sizes[g])] for g in live]
            _one_pass(Xa, y, orders, train_sizes[live], bs, opt, live)
        nepoch += cfg.epoch_size
        epoch += 1
        sel = torch.from_numpy(live)
        correct = count_correct(Xa, y, dev_rows[sel], dev_len[sel], W[sel])
        for j, g in enumerate(live):
            c, epochs_run[g] = int(correct[j]), epoch
            # SentEval compares accuracies correct / n_dev; n_dev is fixed per fit
            if stoppers[g].update(c / max(1, int(dev_len[g]))):
                best_correct[g], best_epoch[g] = c, epoch
                best_W[g] = W[g]
        live = np.array([g for g in live if not stoppers[g].stopped], dtype=np.int64)
    return [
        FitResult(
            best_W[g, :, :D].clone(),
            best_W[g, :, D].clone(),
            best_correct[g],
            int(dev_len[g]),
            best_epoch[g],
            epochs_run[g],
        )
        for g in range(G)
    ]


def _one_pass(
    X: Tensor,
    y: Tensor,
    orders: list[np.ndarray],
    sizes: np.ndarray,
    bs: int,
    opt: _Optimizer,
    live: np.ndarray,
) -> None:
    """One pass over each live fit's training rows in its own order, ``bs`` rows a step
    (``X`` carries the constant-1 bias column)."""
    rows, lengths = _padded(orders)
    all_live = len(live) == len(opt.l2)
    sel_live = torch.from_numpy(live)
    (W,) = opt.params
    for start in range(0, int(sizes.max()), bs):
        have = sizes > start  # fits with rows left in this pass
        full = bool(have.all())
        sub = None if full else torch.from_numpy(np.flatnonzero(have))
        r = rows[:, start : start + bs] if full else rows[sub, start : start + bs]
        sel = None if all_live and full else sel_live if full else sel_live[sub]
        xb = _gather(X, r)  # [g, B, D + 1]
        logits = torch.bmm(xb, (W if sel is None else W[sel]).mT)
        # d(mean cross-entropy)/d logits = (softmax - onehot) / n_rows, padded rows masked out
        d = torch.softmax(logits, -1)
        d.scatter_add_(-1, y[r].unsqueeze(-1), -torch.ones_like(d[..., :1]))
        n = (lengths if full else lengths[sub]) - start
        if int(n.min()) >= r.shape[1]:
            d.mul_(1.0 / r.shape[1])
        else:
            n = n.clamp(max=bs)
            mask = (torch.arange(r.shape[1]) < n[:, None]).to(X.dtype)
            d = d * (mask / n[:, None].to(X.dtype)).unsqueeze(-1)
        opt.step([torch.bmm(d.mT, xb)], sel)
