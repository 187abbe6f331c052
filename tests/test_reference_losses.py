"""Our in-batch losses against sentence-transformers' (the installed reference implementation),
on the same embeddings; our gradient cache against ``CachedMultipleNegativesRankingLoss`` on the
same small model; the float32 logits under bf16 autocast; the chunked similarity matrix.

The hand-loop tests in test_objectives.py / test_functional.py stay: these add a second,
independent reference where one is installable.
"""

from __future__ import annotations

import pytest
import torch

from contrasent.data.batches import PairBatch
from contrasent.model.encoder import Encoder
from contrasent.objectives import build_objective
from contrasent.objectives.functional import chunked_info_nce, info_nce
from contrasent.objectives.inbatch import gathered_info_nce
from contrasent.train.gradcache import gradcache_step

ANCHORS = ["how do I bake bread", "what is a cat", "where is paris", "is tea healthy",
           "who wrote hamlet", "best way to learn piano", "why is the sky blue"]  # fmt: skip
POSITIVES = ["bake bread at home", "cats are small pets", "paris is in france",
             "green tea is healthy", "shakespeare wrote it", "practice scales daily",
             "rayleigh scattering"]  # fmt: skip
NEGATIVES = ["the stock market", "a small dog", "london is big", "coffee is bitter",
             "macbeth", "play the guitar", "the grass is green"]  # fmt: skip


def _st_loss(cls_name: str, **kwargs):
    from sentence_transformers.sentence_transformer import losses

    return getattr(losses, cls_name)(model=None, **kwargs)


def _embeddings(k: int, n: int = 7, h: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(k)
    ]


@pytest.mark.parametrize("negatives", [0, 1, 2])
def test_pairs_loss_equals_multiple_negatives_ranking_loss(negatives):
    embs = _embeddings(2 + negatives)
    ours, _ = gathered_info_nce(embs[0], embs[1], embs[2:], scale=20.0)
    theirs = _st_loss("MultipleNegativesRankingLoss", scale=20.0).compute_loss_from_embeddings(
        embs, None
    )
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-10)
    g_ours = torch.autograd.grad(ours, embs)
    g_theirs = torch.autograd.grad(theirs, embs)
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


def test_symmetric_loss_equals_multiple_negatives_symmetric_ranking_loss():
    embs = _embeddings(2, seed=1)
    ours, _ = gathered_info_nce(embs[0], embs[1], scale=20.0, symmetric=True)
    reference = _st_loss("MultipleNegativesRankingLoss", scale=20.0,
                         directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")  # fmt: skip
    theirs = reference.compute_loss_from_embeddings(embs, None)
    deprecated = _st_loss("MultipleNegativesSymmetricRankingLoss", scale=20.0)
    assert theirs.item() == pytest.approx(
        deprecated.compute_loss_from_embeddings(embs, None).item(), rel=1e-12
    )
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-10)
    for a, b in zip(
        torch.autograd.grad(ours, embs), torch.autograd.grad(theirs, embs), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


def test_chunked_similarity_matrix_equals_one_pass():
    """Anchor chunks with activation checkpointing: same loss and gradients as the full matrix,
    hard negatives (with SimCSE's log-weight) and a mask included."""
    a, p, n = _embeddings(3, n=13, seed=2)
    labels = torch.arange(13)
    cols = labels[:, None] + 13
    mask = torch.zeros(13, 26, dtype=torch.bool)
    mask[0, 3] = mask[5, 20] = True

    def run(chunk):
        loss, acc = chunked_info_nce(a, torch.cat([p, n]), labels, scale=20.0,
                                     hard_negative_cols=cols, hard_negative_weight=0.7,
                                     mask_fn=lambda s, e: mask[s:e], chunk_rows=chunk)  # fmt: skip
        return loss, acc, torch.autograd.grad(loss, [a, p, n])

    full = run(10_000)
    want = info_nce(a, p, scale=20.0, hard_negatives=n, hard_negative_weight=0.7, mask=mask)
    assert full[0].item() == pytest.approx(want.item(), rel=1e-12)
    for chunk in (1, 4, 5):
        loss, acc, grads = run(chunk)
        assert loss.item() == pytest.approx(full[0].item(), rel=1e-12)
        assert acc.item() == full[1].item()
        for x, y in zip(grads, full[2], strict=True):
            torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)


def test_logits_are_float32_under_bf16_autocast():
    """bf16 autocast (the 1B recipe's precision) must not reach the similarity matrix: the loss
    on the same (bf16-representable) embeddings equals the float32 loss to 1e-4, where a bf16
    matmul at scale 20 is off by far more."""
    g = torch.Generator().manual_seed(3)
    center, a, p = (torch.randn(n, 384, generator=g) for n in (1, 64, 64))
    # a collapsed space (every cosine above 0.98, as for BERT before training): where bf16's
    # resolution near cos 1 (2^-8, i.e. 0.08 at scale 20) is as large as the logit gaps
    a = (center + 0.1 * a).bfloat16().float()
    p = (a + 0.05 * p).bfloat16().float()
    exact, _ = gathered_info_nce(a, p, scale=20.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = gathered_info_nce(a, p, scale=20.0)
        naive = torch.nn.functional.cross_entropy(
            20.0 * torch.nn.functional.normalize(a) @ torch.nn.functional.normalize(p).T,
            torch.arange(64),
        )
    assert ours.dtype == torch.float32
    assert abs(ours.item() - exact.item()) < 1e-4
    assert abs(naive.float().item() - exact.item()) > 1e-3  # what the fix prevents


def test_cached_gradients_equal_cached_multiple_negatives_ranking_loss(st_dir):
    """The same small model, batch and mini-batch size: our gradient-cache step for ``pairs``
    (dedup off, scale 20) gives sentence-transformers' CachedMNRL loss and encoder gradients."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
    )

    batch = PairBatch(ANCHORS, POSITIVES, [NEGATIVES])
    st = SentenceTransformer(str(st_dir), device="cpu")
    st.train()
    loss_fn = CachedMultipleNegativesRankingLoss(st, scale=20.0, mini_batch_size=3)
    features = [st.tokenize(texts) for texts in (ANCHORS, POSITIVES, NEGATIVES)]
    st.zero_grad()
    theirs = loss_fn(features, None)
    theirs.backward()
    g_theirs = {n: p.grad for n, p in st[0].auto_model.named_parameters() if p.grad is not None}

    enc = Encoder.from_pretrained(st_dir, device="cpu").train()
    objective = build_objective("pairs", enc, dedup="none")
    out = gradcache_step(enc, objective, batch, 3)
    g_ours = {n: p.grad for n, p in enc.model.named_parameters() if p.grad is not None}
    assert float(out["loss"]) == pytest.approx(theirs.item(), rel=1e-5)
    assert g_ours.keys() == g_theirs.keys()
    for name, g in g_theirs.items():
        torch.testing.assert_close(g_ours[name], g, atol=1e-6, rtol=1e-4, msg=name)


def _nt_xent_loop(z1, z2, t):
    """SimCLR's NT-Xent written out: 2N rows, partner positive, all but self in the softmax."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=-1)
    n = len(z1)
    total = 0.0
    for k in range(2 * n):
        partner = k + n if k < n else k - n
        logits = [float(z[k] @ z[j]) / t for j in range(2 * n) if j != k]
        target = float(z[k] @ z[partner]) / t
        total -= target - torch.logsumexp(torch.tensor(logits, dtype=torch.float64), 0).item()
    return total / (2 * n)


def test_nt_xent_equals_hand_loop_and_chunks_agree():
    from contrasent.objectives.inbatch import gathered_nt_xent

    z1, z2 = _embeddings(2, n=9, seed=5)
    want = _nt_xent_loop(z1.detach(), z2.detach(), 0.1)
    loss, acc = gathered_nt_xent(z1, z2, temperature=0.1)
    assert loss.item() == pytest.approx(want, rel=1e-10)
    grads = torch.autograd.grad(loss, [z1, z2])
    chunked, _ = gathered_nt_xent(z1, z2, temperature=0.1, chunk_rows=4)
    assert chunked.item() == pytest.approx(want, rel=1e-10)
    for a, b in zip(torch.autograd.grad(chunked, [z1, z2]), grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)
    assert 0.0 <= acc.item() <= 1.0
