"""faiss (the optional ``faiss-cpu`` package) behind `contrasent.serve.search.Index`: building an
inner-product index over unit-length rows (flat = exact for small indexes, IVF for large ones)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from contrasent.core.errors import UserError

IVF_MIN_ROWS = 20_000  # below this, faiss gets an exact flat index (same results as exact)
BLOCK_ROWS = 1 << 16  # rows added to faiss per step


def import_faiss():
    try:
        import faiss
    except ImportError as e:
        raise UserError(
            "engine 'faiss' needs the faiss-cpu package: pip install 'contrasent[faiss]'"
        ) from e
    return faiss


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def build_faiss(
    embeddings: Any, excluded: np.ndarray, nlist: int | None = None, seed: int = 0
) -> tuple[Any, dict[str, Any]]:
    """A faiss inner-product index over the normalised rows (empty texts left out).

    Flat (exact) below IVF_MIN_ROWS rows, else IVFFlat with ``nlist`` cells (default 4*sqrt(n),
    as faiss' guidelines suggest) trained on a sample of at most 256 rows per cell.
    """
    faiss = import_faiss()
    n, dim = embeddings.shape
    keep = np.setdiff1d(np.arange(n), excluded) if len(excluded) else None
    eligible = n - len(excluded)
    info: dict[str, Any] = {"type": "flat"}
    if eligible < IVF_MIN_ROWS and nlist is None:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        nlist = int(nlist or max(1, round(4 * math.sqrt(eligible))))
        nlist = max(1, min(nlist, eligible // 39 or 1))  # faiss wants >= 39 points per cell
        rng = np.random.default_rng(seed)
        pool = keep if keep is not None else np.arange(n)
        sample = np.sort(rng.choice(pool, size=min(len(pool), 256 * nlist), replace=False))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(embeddings[sample], dtype=np.float32))
        info = {"type": "ivf", "nlist": nlist, "nprobe": default_nprobe(nlist)}
    for start in range(0, n, BLOCK_ROWS):
        ids = np.arange(start, min(start + BLOCK_ROWS, n), dtype=np.int64)
        if keep is not None:
            ids = np.intersect1d(ids, keep, assume_unique=True)
        index.add_with_ids(np.ascontiguousarray(embeddings[ids], dtype=np.float32), ids)
    return index, info


def default_nprobe(nlist: int) -> int:
    """Cells visited per query: 1/16 of them (at least 8): recall@10 ~0.97+ on clustered data."""
    return int(min(nlist, max(8, nlist // 16)))
