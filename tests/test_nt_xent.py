"""DeCLUTR's NT-Xent is the shared ``inbatch.gathered_nt_xent`` over anchors and averaged
positives: a hand loop, pytorch-metric-learning's NTXentLoss as the reference used it, and two
gloo processes against one (no 1/N gradient scaling, unlike the reference's default)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import gloo_group
from contrasent.objectives.declutr import mean_positives
from contrasent.objectives.inbatch import gathered_nt_xent


def nt_xent(a: torch.Tensor, p: torch.Tensor, t: float = 0.05) -> torch.Tensor:
    return gathered_nt_xent(a, p, temperature=t)[0]


def hand_nt_xent(anchors: torch.Tensor, positives: torch.Tensor, t: float) -> float:
    """NT-Xent with explicit loops: z = [a_1..a_B, p_1..p_B], each row's partner is its positive,
    every other row but itself a negative, mean over the 2B rows."""
    z = [*anchors.tolist(), *positives.tolist()]
    b = len(anchors)

    def cos(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True)) / math.sqrt(
            sum(x * x for x in u) * sum(y * y for y in v)
        )

    total = 0.0
    for k in range(2 * b):
        partner = k + b if k < b else k - b
        denom = sum(math.exp(cos(z[k], z[j]) / t) for j in range(2 * b) if j != k)
        total += -math.log(math.exp(cos(z[k], z[partner]) / t) / denom)
    return total / (2 * b)


def whole_nt_xent(a: torch.Tensor, p: torch.Tensor, t: float = 0.05) -> torch.Tensor:
    """The same formula vectorised, never gathering: the reference's per-replica full loss."""
    z = F.normalize(torch.cat([a, p]), dim=-1)
    logits = z @ z.T / t
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    b = len(a)
    labels = torch.cat([torch.arange(b) + b, torch.arange(b)])
    return F.cross_entropy(logits, labels)


def test_matches_a_hand_loop():
    torch.manual_seed(0)
    a, p = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    for t in (0.05, 0.5):
        want = hand_nt_xent(a, p, t)
        assert nt_xent(a, p, t).item() == pytest.approx(want, rel=1e-10)
        assert whole_nt_xent(a, p, t).item() == pytest.approx(want, rel=1e-10)


def test_mean_positives_layout():
    p = torch.arange(12.0).reshape(6, 2)  # 3 anchors x 2 positives, anchor-major
    assert mean_positives(p, 2).tolist() == [[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]
    with pytest.raises(ValueError, match="not a multiple of num_positives 4"):
        mean_positives(p, 4)


def test_equals_pytorch_metric_learning_as_the_reference_calls_it():
    """DeCLUTR: mean of the positives, cat([anchors, positives]), labels cat([ids, ids]) with
    random ids (``get_embeddings_and_labels``), ``NTXentLoss(temperature=0.05)``."""
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    torch.manual_seed(1)
    # 4 documents x 2 anchors, 2 positives each (the paper's setting)
    a = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    p = torch.randn(16, 16, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(sys.maxsize, (8,))
    ref = pml.NTXentLoss(temperature=0.05)(
        torch.cat([a, mean_positives(p, 2)]), torch.cat([ids, ids])
    )
    ref_grads = torch.autograd.grad(ref, [a, p])
    for chunk in (1024, 3):  # one similarity block, and anchor chunks recomputed in backward
        ours = gathered_nt_xent(a, mean_positives(p, 2), temperature=0.05, chunk_rows=chunk)[0]
        grads = torch.autograd.grad(ours, [a, p])
        assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-12)


# -- two gloo processes ----------------------------------------------------------------------

DIM, B, P = 6, 4, 2  # 4 anchors (2 documents x 2) in all, 2 positives each


def inputs():
    g = torch.Generator().manual_seed(3)
    x_a = torch.randn(B, DIM, generator=g, dtype=torch.float64)
    x_p = torch.randn(B * P, DIM, generator=g, dtype=torch.float64)
    return x_a, x_p


def model() -> torch.nn.Linear:
    torch.manual_seed(4)
    return torch.nn.Linear(DIM, 5).double()


def one_process() -> tuple[float, torch.Tensor]:
    net = model()
    x_a, x_p = inputs()
    loss = nt_xent(net(x_a), mean_positives(net(x_p), P))
    loss.backward()
    return loss.item(), net.weight.grad.clone()


def _worker(rank: int, world: int, out_dir: str) -> None:
    with gloo_group(rank, world, out_dir):
        x_a, x_p = inputs()
        b = B // world
        x_a, x_p = x_a[rank * b : (rank + 1) * b], x_p[rank * b * P : (rank + 1) * b * P]
        results = {}
        # ours: local rows against the gathered pools
        net = model()
        loss = nt_xent(net(x_a), mean_positives(net(x_p), P))
        loss.backward()
        results["ours"] = _ddp_average(loss.detach(), net.weight.grad, world)
        # the reference: gather without gradient, put the local slice (with gradient) back,
        # compute the whole loss on every replica (declutr/common/model_utils.py)
        net = model()
        a, p = net(x_a), mean_positives(net(x_p), P)
        a_all, p_all = _gather_replace(a, rank, world), _gather_replace(p, rank, world)
        ref = whole_nt_xent(a_all, p_all)
        ref.backward()
        results["reference"] = _ddp_average(ref.detach(), net.weight.grad, world)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def _gather_replace(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    parts = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(parts, t.detach().contiguous())
    parts[rank] = t
    return torch.cat(parts)


def _ddp_average(loss: torch.Tensor, grad: torch.Tensor, world: int):
    loss, grad = loss.clone(), grad.clone()
    dist.all_reduce(loss)
    dist.all_reduce(grad)
    return loss.item() / world, grad / world


def test_two_processes_equal_one_and_the_reference_gradient_is_halved(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    loss_1, grad_1 = one_process()
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt")
        loss, grad = res["ours"]
        assert loss == pytest.approx(loss_1, rel=1e-12)
        torch.testing.assert_close(grad, grad_1, rtol=1e-10, atol=1e-14)
        ref_loss, ref_grad = res["reference"]
        assert ref_loss == pytest.approx(loss_1, rel=1e-12)  # same loss value...
        torch.testing.assert_close(ref_grad, grad_1 / 2, rtol=1e-10, atol=1e-14)  # 1/N gradient
        torch.testing.assert_close(ref_grad * 2, grad_1, rtol=1e-10, atol=1e-14)  # scale_fix
