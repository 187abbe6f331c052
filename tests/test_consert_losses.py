"""ConSERT's loss math: the ONE shared NT-Xent (``objectives.inbatch.gathered_nt_xent``) against a
hand loop and the reference's formula, across two real processes; the NLI softmax head against
sentence-transformers' SoftmaxLoss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import gloo_group
from contrasent.objectives.inbatch import gathered_nt_xent
from contrasent.objectives.nli_head import NLISoftmaxHead, nli_features


def views(n=6, h=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, h, generator=g, dtype=dtype), torch.randn(n, h, generator=g, dtype=dtype)


def nt_xent(z1, z2, tau):
    return gathered_nt_xent(z1, z2, temperature=tau)[0]


def hand_nt_xent(z1, z2, tau):
    """Paper eq. 1 with loops: 2N representations, each against the other 2N - 1."""
    reps = [*z1, *z2]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        sims = [torch.cosine_similarity(reps[i], reps[k], dim=0).item() / tau for k in range(2 * n)]
        denom = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        total += -math.log(math.exp(sims[j]) / denom)
    return total / (2 * n)


def reference_formula(z1, z2, tau):
    """AdvCLSoftmaxLoss._contrastive_loss_forward (yym6472/ConSERT), written out again."""
    h1, h2 = nn.functional.normalize(z1, dim=-1), nn.functional.normalize(z2, dim=-1)
    n = len(z1)
    labels = torch.arange(n)
    masks = nn.functional.one_hot(labels, n).to(z1.dtype)
    aa = h1 @ h1.T / tau - masks * 1e9
    bb = h2 @ h2.T / tau - masks * 1e9
    ab, ba = h1 @ h2.T / tau, h2 @ h1.T / tau
    loss_a = nn.functional.cross_entropy(torch.cat([ab, aa], 1), labels)
    loss_b = nn.functional.cross_entropy(torch.cat([ba, bb], 1), labels)
    return loss_a + loss_b


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_equals_hand_loop(tau):
    z1, z2 = views()
    assert nt_xent(z1, z2, tau).item() == pytest.approx(hand_nt_xent(z1, z2, tau), rel=1e-12)


def test_nt_xent_is_half_the_reference_sum():
    """The reference returns loss_a + loss_b: 2x the mean over 2N rows. The recipes put that
    factor into the objective's weight (0.15 x 2 = 0.3) instead of a second loss function."""
    z1, z2 = views(8, 7, seed=3)
    z1.requires_grad_(True)
    ref = reference_formula(z1, z2, 0.1)
    ours = nt_xent(z1, z2, 0.1)
    torch.testing.assert_close(2 * ours, ref)
    (g_ref,) = torch.autograd.grad(0.15 * ref, [z1])
    (g_ours,) = torch.autograd.grad(0.3 * ours, [z1])
    torch.testing.assert_close(g_ours, g_ref)


def test_nt_xent_identical_views_still_has_in_batch_signal():
    z = views(5, 4)[0]
    loss = nt_xent(z, z.clone(), 0.1)
    assert torch.isfinite(loss) and loss > 0  # the None-None ablation still pushes rows apart


def test_nt_xent_rejects_bad_inputs():
    z1, z2 = views(4, 3)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z1, z2, 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        nt_xent(z1, z2[:3], 0.1)


# ------------------------------------------------------------------ two real processes
def _worker(rank: int, world: int, out_dir: str) -> None:
    with gloo_group(rank, world, out_dir):
        z1, z2 = views(8, 6, seed=9)
        b = len(z1) // world
        l1 = z1[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        l2 = z2[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        loss = nt_xent(l1, l2, 0.1)  # gathers the other process's rows itself
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        # DDP averages parameter gradients over W: the slice gradient / W is what one process
        # holding the whole batch gets for those rows
        torch.save(
            {"loss": mean_loss.item() / world, "g1": l1.grad / world, "g2": l2.grad / world},
            Path(out_dir) / f"rank{rank}.pt",
        )


def test_two_gloo_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    z1, z2 = views(8, 6, seed=9)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    ref = nt_xent(z1, z2, 0.1)
    g1, g2 = torch.autograd.grad(ref, [z1, z2])
    for r in range(2):
        out = torch.load(tmp_path / f"rank{r}.pt")
        assert out["loss"] == pytest.approx(ref.item(), rel=1e-12)
        torch.testing.assert_close(out["g1"], g1[r * 4 : (r + 1) * 4], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(out["g2"], g2[r * 4 : (r + 1) * 4], rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------ NLI softmax head
class _Given(nn.Module):
    """A stand-in SentenceTransformer: returns the embedding handed in the features."""

    device = torch.device("cpu")

    def forward(self, features):
        return {"sentence_embedding": features["emb"]}


def test_nli_features_blocks_in_reference_order():
    u = torch.tensor([[1.0, -2.0]])
    v = torch.tensor([[3.0, -1.0]])
    f = nli_features(u, v, max_square=True)
    assert f.tolist() == [[1.0, -2.0, 3.0, -1.0, 2.0, 1.0, 9.0, 1.0]]
    f = nli_features(u, v, multiplication=True, max_square=True)
    assert f[0, 6:8].tolist() == [3.0, 2.0] and f[0, 8:].tolist() == [9.0, 1.0]
    assert nli_features(u, v, difference=False).shape == (1, 4)


def test_head_equals_sentence_transformers_softmax_loss():
    from sentence_transformers.sentence_transformer.losses import SoftmaxLoss

    torch.manual_seed(0)
    dim, n = 8, 10
    u = torch.randn(n, dim, requires_grad=True)
    v = torch.randn(n, dim, requires_grad=True)
    labels = torch.randint(0, 3, (n,))
    ours = NLISoftmaxHead(dim)
    theirs = SoftmaxLoss(_Given(), dim, 3)
    theirs.classifier.load_state_dict(ours.classifier.state_dict())
    l_ours = ours.loss(u, v, labels)
    l_theirs = theirs([{"emb": u}, {"emb": v}], labels)
    torch.testing.assert_close(l_ours, l_theirs, rtol=0, atol=0)
    g_ours = torch.autograd.grad(l_ours, [u, v, *ours.classifier.parameters()])
    g_theirs = torch.autograd.grad(l_theirs, [u, v, *theirs.classifier.parameters()])
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_max_square_head_equals_hand_linear_layer():
    torch.manual_seed(1)
    dim, n = 4, 6
    u, v = torch.randn(n, dim), torch.randn(n, dim)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    head = NLISoftmaxHead(dim, max_square=True)
    assert head.classifier.in_features == 4 * dim
    w, b = head.classifier.weight, head.classifier.bias
    feats = torch.cat([u, v, (u - v).abs(), torch.maximum(u, v) ** 2], 1)
    logits = feats @ w.T + b
    hand = -torch.log_softmax(logits, 1)[torch.arange(n), labels].mean()
    torch.testing.assert_close(head.loss(u, v, labels), hand)
    assert head.accuracy(head(u, v), labels) == (logits.argmax(1) == labels).float().mean()


def test_head_rejects_labels_outside_the_three():
    head = NLISoftmaxHead(3)
    with pytest.raises(ValueError, match="NLI label 3 outside 0..2"):
        head.loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 3]))
