"""Embedding-space diagnostics on STS-B: alignment, uniformity, similarity by gold score.

* Alignment and uniformity (Wang & Isola 2020), as SimCSE (Gao et al. 2021, section 6 and
  figure 2) measures them: on L2-normalised embeddings, alignment
  ``E ||f(x) - f(x+)||^2`` over the STS-B pairs whose gold score is >= 4 (the positives) and
  uniformity ``log E exp(-2 ||f(x) - f(y)||^2)`` over every distinct STS-B sentence of the split.
  Lower is better for both. The STS-B dev split is used, during training and after it, so the
  numbers of a run's trajectory and of its final evaluation are comparable.
* Similarity distribution (ConSERT, Yan et al. 2021, figure 1): the cosine similarities of the
  STS-B pairs grouped by gold score ([0, 1), [1, 2), ..., [4, 5]); a collapsed space (vanilla
  BERT) puts every group into one narrow high-similarity band.

Everything here is a pure function of (pairs, embeddings); ``contrasent.eval.sts`` calls it with
the embeddings it already computed, so diagnostics cost no extra encoding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from contrasent.objectives.functional import alignment, uniformity

POSITIVE_THRESHOLD = 4.0  # gold score of a "positive" pair
GOLD_EDGES = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)  # ConSERT's groups; the last one includes 5
COSINE_BINS = np.linspace(-1.0, 1.0, 41)  # histogram bins of the similarity plot (width 0.05)


def alignment_uniformity(
    a: np.ndarray, b: np.ndarray, gold: np.ndarray, sentences: np.ndarray, threshold: float = 4.0
) -> dict[str, Any]:
    """Alignment over the rows ``gold >= threshold`` of the pair embeddings ``a``/``b``
    [P, D]; uniformity over ``sentences`` [S, D]. Embeddings are L2-normalised here (float64)."""
    pos = gold >= threshold
    out: dict[str, Any] = {"threshold": threshold, "n_positive_pairs": int(pos.sum())}
    out["n_sentences"] = int(len(sentences))
    with torch.no_grad():
        if pos.any():
            x, y = torch.from_numpy(a[pos]).double(), torch.from_numpy(b[pos]).double()
            out["alignment"] = float(alignment(x, y, alpha=2.0, normalize=True))
        else:
            out["alignment"] = None
        if len(sentences) >= 2:
            s = torch.from_numpy(np.asarray(sentences)).double()
            out["uniformity"] = float(uniformity(s, t=2.0, normalize=True))
        else:
            out["uniformity"] = None
    return out


def similarity_distribution(gold: np.ndarray, cosine: np.ndarray) -> dict[str, Any]:
    """Cosine statistics and a histogram (``COSINE_BINS``) per gold-score group."""
    groups = []
    last = len(GOLD_EDGES) - 2
    for i, (lo, hi) in enumerate(zip(GOLD_EDGES[:-1], GOLD_EDGES[1:], strict=True)):
        sel = (gold >= lo) & ((gold <= hi) if i == last else (gold < hi))
        c = cosine[sel]
        group: dict[str, Any] = {"gold": [lo, hi], "n": int(sel.sum())}
        if len(c):
            q = np.quantile(c, [0.05, 0.25, 0.5, 0.75, 0.95])
            group |= {"mean": float(c.mean()), "std": float(c.std())}
            group["quantiles"] = dict(
                zip(("5", "25", "50", "75", "95"), map(float, q), strict=True)
            )
        group["hist"] = np.histogram(np.clip(c, -1, 1), bins=COSINE_BINS)[0].tolist()
        groups.append(group)
    return {"bin_edges": COSINE_BINS.round(4).tolist(), "groups": groups}


def sts_diagnostics(
    s1: list[str],
    s2: list[str],
    gold: np.ndarray,
    cosine: np.ndarray,
    index: dict[str, int],
    emb: np.ndarray,
    split: str,
    threshold: float = POSITIVE_THRESHOLD,
) -> dict[str, Any]:
    """All diagnostics of one scored STS split (``index``/``emb``: sentence -> row of ``emb``)."""
    a = emb[[index[s] for s in s1]]
    b = emb[[index[s] for s in s2]]
    uniq = sorted(set(s1) | set(s2))
    sentences = emb[[index[s] for s in uniq]]
    out = {"task": "STSBenchmark", "split": split}
    out |= alignment_uniformity(a, b, gold, sentences, threshold)
    out["similarity"] = similarity_distribution(gold, cosine)
    return out
