"""contrasent.objectives.functional against hand computations written with explicit loops."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from contrasent.objectives.functional import (
    alignment,
    duplicate_mask,
    in_batch_accuracy,
    info_nce,
    info_nce_logits,
    text_ids,
    uniformity,
)


def cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def ce(logits: list[float], target: int) -> float:
    m = max(logits)
    return -(logits[target] - (m + math.log(sum(math.exp(x - m) for x in logits))))


def loop_info_nce(a, c, s, blocks=(), w=0.0, labels=None, mask=None) -> float:
    """Mean over rows of -log softmax at the positive; masked columns are simply left out."""
    a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
    blocks = [np.asarray(b, np.float64) for b in blocks]
    labels = list(range(len(a))) if labels is None else list(labels)
    total = 0.0
    for i in range(len(a)):
        logits, target = [], None
        columns = [(c[j], 0.0) for j in range(len(c))]
        for b in blocks:
            columns += [(b[j], w if j == labels[i] else 0.0) for j in range(len(b))]
        for j, (vec, bias) in enumerate(columns):
            if mask is not None and j < mask.shape[1] and mask[i, j]:
                continue
            if j == labels[i]:
                target = len(logits)
            logits.append(s * cos(a[i], vec) + bias)
        total += ce(logits, target)
    return total / len(a)


def loop_reverse(a_pool, c, s, labels, rows, rev_mask=None) -> float:
    """Positive of each row (c[labels[i]]) against all anchors of the pool; target labels[i]."""
    total = 0.0
    for i in range(rows):
        q = c[labels[i]]
        logits, target = [], None
        for j in range(len(a_pool)):
            if rev_mask is not None and rev_mask[i, j]:
                continue
            if j == labels[i]:
                target = len(logits)
            logits.append(s * cos(q, a_pool[j]))
        total += ce(logits, target)
    return total / rows


@pytest.fixture()
def emb():
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(6, 5, generator=g, dtype=torch.float64),
        "c": torch.randn(6, 5, generator=g, dtype=torch.float64),
        "h1": torch.randn(6, 5, generator=g, dtype=torch.float64),
        "h2": torch.randn(6, 5, generator=g, dtype=torch.float64),
    }


def test_temperature_and_scale(emb):
    a, c = emb["a"], emb["c"]
    want = loop_info_nce(a, c, 1 / 0.05)
    assert info_nce(a, c, temperature=0.05).item() == pytest.approx(want, rel=1e-10)
    assert info_nce(a, c, scale=20.0).item() == pytest.approx(want, rel=1e-10)
    assert info_nce(a, c, temperature=0.5).item() == pytest.approx(
        loop_info_nce(a, c, 2.0), rel=1e-10
    )
    for bad in ({}, {"temperature": 0.05, "scale": 20.0}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            info_nce(a, c, **bad)


def test_hard_negatives_with_log_weight(emb):
    a, c, h1, h2 = emb["a"], emb["c"], emb["h1"], emb["h2"]
    for w in (0.0, 1.5, -2.0):
        want = loop_info_nce(a, c, 20.0, [h1], w)
        got = info_nce(a, c, scale=20.0, hard_negatives=[h1], hard_negative_weight=w)
        assert got.item() == pytest.approx(want, rel=1e-10)
    want = loop_info_nce(a, c, 20.0, [h1, h2], 0.7)
    as_list = info_nce(a, c, scale=20.0, hard_negatives=[h1, h2], hard_negative_weight=0.7)
    as_one = info_nce(
        a, c, scale=20.0, hard_negatives=torch.cat([h1, h2]), hard_negative_weight=0.7
    )
    assert as_list.item() == pytest.approx(want, rel=1e-10)
    assert as_one.item() == pytest.approx(want, rel=1e-10)


def test_hard_negative_weight_is_simcse_weights_matrix(emb):
    """The exact construction of SimCSE's cl_forward, added after dividing by the temperature."""
    a, c, h = emb["a"], emb["c"], emb["h1"]
    temp, z3_weight = 0.05, 0.9
    sim = torch.nn.CosineSimilarity(dim=-1)
    cos_sim = sim(a.unsqueeze(1), c.unsqueeze(0)) / temp
    z1_z3_cos = sim(a.unsqueeze(1), h.unsqueeze(0)) / temp
    cos_sim = torch.cat([cos_sim, z1_z3_cos], 1)
    weights = torch.tensor(
        [
            [0.0] * (cos_sim.size(-1) - z1_z3_cos.size(-1))
            + [0.0] * i
            + [z3_weight]
            + [0.0] * (z1_z3_cos.size(-1) - i - 1)
            for i in range(z1_z3_cos.size(-1))
        ],
        dtype=torch.float64,
    )
    want = torch.nn.functional.cross_entropy(cos_sim + weights, torch.arange(len(a)))
    got = info_nce(a, c, temperature=temp, hard_negatives=[h], hard_negative_weight=z3_weight)
    assert got.item() == pytest.approx(want.item(), rel=1e-9)


def test_symmetric(emb):
    a, c = emb["a"], emb["c"]
    fwd = loop_info_nce(a, c, 20.0)
    rev = loop_reverse(a.numpy(), c.numpy(), 20.0, list(range(6)), 6)
    assert info_nce(a, c, scale=20.0, symmetric=True).item() == pytest.approx(
        (fwd + rev) / 2, rel=1e-10
    )
    # the 1B trainer's formula: (ce(scores, labels) + ce(scores.T, labels)) / 2
    scores = (
        20.0 * torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(c, dim=1).T
    )
    lab = torch.arange(6)
    ref = (
        torch.nn.functional.cross_entropy(scores, lab)
        + torch.nn.functional.cross_entropy(scores.T, lab)
    ) / 2
    assert info_nce(a, c, scale=20.0, symmetric=True).item() == pytest.approx(ref.item(), rel=1e-10)


def test_mask(emb):
    a, c, h = emb["a"], emb["c"], emb["h1"]
    mask = torch.zeros(6, 12, dtype=torch.bool)
    mask[0, 3] = mask[2, 1] = mask[2, 5] = mask[4, 6 + 1] = True
    want = loop_info_nce(a, c, 20.0, [h], 0.3, mask=mask.numpy())
    got = info_nce(a, c, scale=20.0, hard_negatives=[h], hard_negative_weight=0.3, mask=mask)
    assert got.item() == pytest.approx(want, rel=1e-10)
    # a mask over the candidate block only leaves the hard negatives in
    short = mask[:, :6]
    got = info_nce(a, c, scale=20.0, hard_negatives=[h], mask=short)
    assert got.item() == pytest.approx(
        loop_info_nce(a, c, 20.0, [h], mask=short.numpy()), rel=1e-10
    )
    bad = torch.zeros(6, 6, dtype=torch.bool)
    bad[1, 1] = True
    with pytest.raises(ValueError, match="positive"):
        info_nce(a, c, scale=20.0, mask=bad)


def test_labels_offset_local_rows_average_to_full_batch(emb):
    """Two 'processes' of 3 rows each against all 6 candidates: the mean of their losses is the
    full-batch loss, in every configuration."""
    a, c, h = emb["a"], emb["c"], emb["h1"]
    mask = torch.zeros(6, 12, dtype=torch.bool)
    mask[1, 4] = mask[4, 0] = True
    rev_mask = torch.zeros(6, 6, dtype=torch.bool)
    rev_mask[3, 5] = True
    kw = dict(scale=20.0, hard_negatives=[h], hard_negative_weight=0.5)
    full = info_nce(a, c, **kw, mask=mask, symmetric=True, reverse_mask=rev_mask)
    halves = []
    for r in range(2):
        rows = slice(3 * r, 3 * r + 3)
        labels = torch.arange(3) + 3 * r
        got = info_nce(a[rows], c, **kw, labels=labels, mask=mask[rows], symmetric=True,
                       anchor_pool=a, reverse_mask=rev_mask[rows])  # fmt: skip
        fwd = loop_info_nce(
            a[rows], c, 20.0, [h], 0.5, labels=labels.tolist(), mask=mask[rows].numpy()
        )
        rev = loop_reverse(a.numpy(), c.numpy(), 20.0, labels.tolist(), 3, rev_mask[rows].numpy())
        assert got.item() == pytest.approx((fwd + rev) / 2, rel=1e-10)
        halves.append(got)
    assert ((halves[0] + halves[1]) / 2).item() == pytest.approx(full.item(), rel=1e-10)


def test_logits_and_accuracy(emb):
    a, c = emb["a"], emb["c"]
    c2 = c.clone()
    c2[:4] = a[:4]  # rows 0..3 find themselves; rows 4, 5 are random
    logits, labels = info_nce_logits(a, c2, scale=20.0)
    assert logits.shape == (6, 6)
    hits = sum(int(np.argmax(logits[i].numpy()) == i) for i in range(6))
    assert in_batch_accuracy(logits, labels).item() == pytest.approx(hits / 6)
    assert hits >= 4


def test_alignment_uniformity():
    g = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(7, 4, generator=g, dtype=torch.float64),
        torch.randn(7, 4, generator=g, dtype=torch.float64),
    )
    xn = [v / np.linalg.norm(v) for v in x.numpy()]
    yn = [v / np.linalg.norm(v) for v in y.numpy()]
    for alpha in (2, 1):
        want = sum(np.linalg.norm(p - q) ** alpha for p, q in zip(xn, yn, strict=True)) / 7
        assert alignment(x, y, alpha=alpha).item() == pytest.approx(want, rel=1e-10)
    for t in (2.0, 0.5):
        pairs = [
            math.exp(-t * np.linalg.norm(xn[i] - xn[j]) ** 2)
            for i in range(7)
            for j in range(i + 1, 7)
        ]
        assert uniformity(x, t=t).item() == pytest.approx(
            math.log(sum(pairs) / len(pairs)), rel=1e-10
        )
    # without normalisation the raw vectors are used
    raw = sum(np.linalg.norm(p - q) ** 2 for p, q in zip(x.numpy(), y.numpy(), strict=True)) / 7
    assert alignment(x, y, normalize=False).item() == pytest.approx(raw, rel=1e-10)


def test_text_ids_are_stable_hashes():
    ids = text_ids(["a cat", "a dog", "a cat", ""])
    assert ids.dtype == torch.int64
    assert ids[0] == ids[2] and ids[0] != ids[1]
    want = int.from_bytes(hashlib.blake2b(b"a dog", digest_size=8).digest(), "big", signed=True)
    assert ids[1].item() == want  # no per-process salt (unlike hash())


def test_duplicate_mask_matches_loops():
    row = torch.tensor([[10, 1], [20, 2], [10, 3], [40, 4]])  # (positive id, anchor id)
    cols = torch.tensor([[10, 1], [20, 2], [10, 3], [40, 4], [2, 2], [99, 99]])
    labels = torch.tensor([0, 1, 2, 3])
    got = duplicate_mask(row, cols, labels)
    for i in range(4):
        for j in range(6):
            want = j != labels[i] and bool(set(row[i].tolist()) & set(cols[j].tolist()))
            assert bool(got[i, j]) == want, (i, j)
    assert got[0, 2] and got[2, 0] and got[1, 4] and not got[0, 0]
    one_d = duplicate_mask(torch.tensor([5, 6, 5]), torch.tensor([5, 6, 5, 7]))
    assert one_d.tolist() == [[False, False, True, False], [False, False, False, False],
                              [True, False, False, False]]  # fmt: skip
