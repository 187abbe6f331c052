"""Alignment / uniformity and the similarity distribution against hand computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from contrasent.data import senteval
from contrasent.eval import sts
from contrasent.eval.diagnostics import (
    COSINE_BINS,
    alignment_uniformity,
    similarity_distribution,
    sts_diagnostics,
)


def test_alignment_uniformity_hand_computed() -> None:
    # unit vectors at known angles: ||u - v||^2 = 2 - 2 cos(angle)
    ang = {"a": 0.0, "b": math.pi / 2, "c": math.pi, "d": math.pi / 3}
    vec = {k: np.array([math.cos(t), math.sin(t)]) for k, t in ang.items()}
    vec["d"] = 5.0 * vec["d"]  # not unit length: the functions normalise
    # pairs (a, d) gold 4.5 and (b, c) gold 4.0 are positives; (a, c) gold 1 is not
    a = np.stack([vec["a"], vec["b"], vec["a"]])
    b = np.stack([vec["d"], vec["c"], vec["c"]])
    gold = np.array([4.5, 4.0, 1.0])
    sents = np.stack([vec[k] for k in "abcd"])
    out = alignment_uniformity(a, b, gold, sents)
    # alignment: mean of ||a-d||^2 = 2 - 2cos(60deg) = 1 and ||b-c||^2 = 2 - 2cos(90deg) = 2
    assert out["alignment"] == pytest.approx(1.5, abs=1e-12)
    assert out["n_positive_pairs"] == 2 and out["n_sentences"] == 4
    # uniformity: log mean over the 6 pairs of exp(-2 ||x_i - x_j||^2) of the normalised vectors
    dists = [2 - 2 * math.cos(ang[i] - ang[j]) for i, j in itertools.combinations("abcd", 2)]
    expected = math.log(sum(math.exp(-2 * d) for d in dists) / 6)
    assert out["uniformity"] == pytest.approx(expected, abs=1e-12)


def test_no_positive_pair_gives_none() -> None:
    x = np.eye(3)
    out = alignment_uniformity(x, x, np.array([1.0, 2.0, 3.9]), x)
    assert out["alignment"] is None and out["uniformity"] is not None


def test_similarity_distribution_groups_and_histograms() -> None:
    gold = np.array([0.0, 0.5, 1.0, 2.5, 3.99, 4.0, 5.0])
    cos = np.array([-1.0, 0.1, 0.2, 0.3, 0.4, 0.9, 1.0])
    out = similarity_distribution(gold, cos)
    groups = out["groups"]
    assert [g["n"] for g in groups] == [2, 1, 1, 1, 2]  # 5.0 falls in the last group
    assert [sum(g["hist"]) for g in groups] == [g["n"] for g in groups]
    assert groups[4]["mean"] == pytest.approx(0.95)
    assert len(out["bin_edges"]) == len(COSINE_BINS) and groups[0]["hist"][0] == 1


def test_sts_diagnostics_on_stsb_dev_matches_direct_computation(senteval_dir) -> None:
    pairs = senteval.read_stsb(senteval_dir, "dev")
    rng = np.random.default_rng(0)
    uniq = sorted(set(pairs.s1) | set(pairs.s2))
    index = {s: i for i, s in enumerate(uniq)}
    emb = rng.normal(size=(len(uniq), 8))
    cos = sts.cosine_scores(pairs, index, emb)
    out = sts_diagnostics(pairs.s1, pairs.s2, pairs.gold, cos, index, emb, "dev")
    pos = pairs.gold >= 4
    n = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    a, b = n[[index[s] for s in pairs.s1]], n[[index[s] for s in pairs.s2]]
    assert out["n_positive_pairs"] == int(pos.sum()) > 100
    assert out["alignment"] == pytest.approx(float(((a - b) ** 2).sum(1)[pos].mean()), rel=1e-9)
    sq = ((n[:, None, :] - n[None, :, :]) ** 2).sum(-1)[np.triu_indices(len(n), 1)]
    assert out["uniformity"] == pytest.approx(math.log(np.exp(-2 * sq).mean()), rel=1e-9)
    assert out["n_sentences"] == len(uniq)


def test_evaluate_sts_reports_diagnostics_and_eval_record(senteval_dir) -> None:
    from contrasent.train.config import EvalConfig
    from contrasent.train.selection import eval_record

    def encode(texts):
        return np.array([[len(t), t.count(" ") + 1.0, 1.0] for t in texts])

    res = sts.evaluate_sts(encode, senteval_dir, mode="dev", diagnostics=True)
    diag = res["diagnostics"]
    assert diag["split"] == "dev" and diag["alignment"] > 0 and diag["uniformity"] < 0
    record = eval_record(10, res, EvalConfig(), 1.0, 1.0, 10)
    assert record["alignment"] == diag["alignment"] and record["uniformity"] == diag["uniformity"]
    assert "diagnostics" not in sts.evaluate_sts(encode, senteval_dir, mode="dev")
