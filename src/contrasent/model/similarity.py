"""Cosine similarity and exact top-k search over embeddings (numpy): what ``Encoder.similarity``,
the search index and the retrieval evaluation share. The exact search reads the embedding rows
block by block, so a memory-mapped 1M-row matrix never has to fit in memory at once."""

from __future__ import annotations

from typing import Any

import numpy as np

from contrasent.core.errors import UserError

BLOCK_BYTES = 64 << 20  # embedding rows read per step of exact search
SCORE_FLOATS = 16 << 20  # bound on the [queries x rows] score block


def _as_matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise UserError(f"similarity: {name} must be a vector or a matrix, got shape {arr.shape}")
    return arr


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); an all-zero row stays zero (cosine 0 with anything)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cos_sim(a: Any, b: Any) -> np.ndarray:
    """Cosine similarity matrix [len(a), len(b)] of two embedding matrices (or vectors)."""
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise UserError(f"similarity: dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    return normalize_rows(a) @ normalize_rows(b).T


def similarity(encoder: Any, a: Any, b: Any, batch_size: int = 64) -> float | np.ndarray:
    """Cosine similarity of texts or embeddings, shaped like SimCSE's tool returns it.

    ``a`` and ``b`` are each a string, a list of strings, or an embedding array. Two lists give
    a [len(a), len(b)] matrix; a single string (or 1-D vector) on one side drops that axis; two
    single strings give a float.
    """

    def embed(x: Any) -> tuple[np.ndarray, bool]:
        if isinstance(x, str):
            return encoder.encode([x], batch_size=batch_size), True
        if isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x):
            return encoder.encode(list(x), batch_size=batch_size), False
        arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
        return arr, arr.ndim == 1

    (ea, single_a), (eb, single_b) = embed(a), embed(b)
    sims = cos_sim(ea, eb)
    if single_a and single_b:
        return float(sims[0, 0])
    if single_a:
        return sims[0]
    return sims[:, 0] if single_b else sims


# ----------------------------------------------------------------------------- exact search
def exact_search(
    queries: np.ndarray,
    embeddings: Any,
    top_k: int,
    inv_norms: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
    block_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``embeddings`` by inner product with each (normalised) query.

    ``embeddings`` may be a memmap: it is read ``block_rows`` rows at a time and only a running
    top-k per query is kept. ``inv_norms`` rescales rows that are not unit length; ``excluded``
    (sorted ids) never appear. Returns (scores, ids), each [n_queries, k'] with k' = min(top_k,
    eligible rows), sorted by score descending, ties by id ascending.
    """
    n, m = len(embeddings), len(queries)
    dim = queries.shape[1]
    excluded = np.empty(0, np.int64) if excluded is None else excluded
    k = max(0, min(top_k, n - len(excluded)))
    if k == 0 or m == 0:
        return np.empty((m, 0), np.float32), np.empty((m, 0), np.int64)
    if block_rows is None:
        block_rows = max(k, min(BLOCK_BYTES // (4 * dim), SCORE_FLOATS // max(m, 1)))
    best_s = np.full((m, 0), -np.inf, np.float32)
    best_i = np.empty((m, 0), np.int64)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        block = np.asarray(embeddings[start:stop], dtype=np.float32)
        scores = queries @ block.T
        if inv_norms is not None:
            scores *= inv_norms[start:stop]
        lo, hi = np.searchsorted(excluded, [start, stop])
        scores[:, excluded[lo:hi] - start] = -np.inf
        ids = np.broadcast_to(np.arange(start, stop), scores.shape)
        best_s, best_i = _keep_top(
            np.concatenate([best_s, scores], 1), np.concatenate([best_i, ids], 1), k
        )
    order = np.lexsort((best_i, -best_s), axis=1)
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def _keep_top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] <= k:
        return scores, ids
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
