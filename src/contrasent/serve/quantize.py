"""Quantized embeddings and search over them (Shakir, Aarsen & Lee, 2024, "Binary and Scalar
Embedding Quantization", the sentence-transformers / Hugging Face write-up).

* ``int8`` / ``uint8``: per dimension, the calibration range ``[min, max]`` (over the embedded
  rows, or given) is cut into 256 buckets; code = ``floor((x - min) / step)`` clipped to
  [0, 255] (``int8``: minus 128). 4x smaller than float32.
* ``binary`` / ``ubinary``: one bit per dimension (``x > 0``), packed 8 to a byte (``binary``:
  the byte minus 128 as int8, ``ubinary``: the byte). 32x smaller.

Equal to sentence-transformers' ``quantize_embeddings`` on the same input and ranges (tested).
Search: binary by Hamming distance (faiss ``IndexBinaryFlat`` when installed, else packed numpy
with a popcount table), int8/uint8 by the integer dot product of the query's codes and the
corpus codes; either may rescore its top ``rescore_k`` candidates by the float query against the
corpus codes unpacked (+-1 bits) or dequantized (bucket centres), as sentence-transformers'
``semantic_search_faiss`` rescoring does. No float corpus is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrasent.core.errors import UserError

PRECISIONS = ("binary", "ubinary", "int8", "uint8")
BITS = {"binary": 1, "ubinary": 1, "int8": 8, "uint8": 8}
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
BLOCK_ROWS = 65536


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"--quantize {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def calibration_ranges(embeddings: Any) -> np.ndarray:
    """``[2, dim]``: per-dimension minimum and maximum (read block by block from a memmap)."""
    n, dim = embeddings.shape
    if n < 2:
        raise UserError(
            f"int8 calibration needs at least 2 embeddings, got {n}: give ranges from a larger set"
        )
    lo = np.full(dim, np.inf, np.float32)
    hi = np.full(dim, -np.inf, np.float32)
    for start in range(0, n, BLOCK_ROWS):
        block = np.asarray(embeddings[start : start + BLOCK_ROWS], dtype=np.float32)
        lo, hi = np.minimum(lo, block.min(0)), np.maximum(hi, block.max(0))
    return np.vstack([lo, hi])


def quantize(embeddings: Any, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Codes of ``embeddings`` ``[n, dim]`` (float) at ``precision``; int8/uint8 use ``ranges``
    (``[2, dim]``: min, max), by default :func:`calibration_ranges` of the embeddings."""
    check_precision(precision)
    x = np.asarray(embeddings, dtype=np.float32)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(x > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    ranges = calibration_ranges(x) if ranges is None else np.asarray(ranges, np.float32)
    if ranges.shape != (2, x.shape[-1]):
        raise UserError(f"quantization ranges have shape {ranges.shape}, need (2, {x.shape[-1]})")
    starts, steps = ranges[0], (ranges[1] - ranges[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    codes = np.clip(np.floor((x - starts) / steps), 0, 255)
    return (codes - 128).astype(np.int8) if precision == "int8" else codes.astype(np.uint8)


def dequantize(codes: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Float vectors the codes stand for: +-1 per bit (binary), the bucket centre (int8)."""
    if precision in ("binary", "ubinary"):
        packed = codes.view(np.uint8) if precision == "ubinary" else (codes.astype(np.int16) + 128)
        return np.unpackbits(packed.astype(np.uint8), axis=-1).astype(np.float32) * 2 - 1
    if ranges is None:
        raise ValueError("int8 codes need their ranges to be dequantized")
    starts, steps = ranges[0], (ranges[1] - ranges[0]) / 255
    u = codes.astype(np.float32) + (128 if precision == "int8" else 0)
    return starts + (u + 0.5) * steps


def bytes_per_vector(dim: int, precision: str | None) -> int:
    """Memory of one stored vector: float32 (None), one byte a dim, one bit a dim."""
    if precision is None:
        return 4 * dim
    return dim if BITS[precision] == 8 else (dim + 7) // 8


def _packed(codes: np.ndarray, precision: str) -> np.ndarray:
    return codes if precision == "ubinary" else (codes.astype(np.int16) + 128).astype(np.uint8)


def hamming(queries: np.ndarray, corpus: np.ndarray) -> np.ndarray:
    """``[q, n]`` Hamming distances between packed bit rows (uint8) by a popcount table."""
    xor = np.bitwise_xor(queries[:, None, :], corpus[None, :, :])
    return _POPCOUNT[xor].sum(-1, dtype=np.int32)


def search_quantized(
    queries: np.ndarray,
    codes: np.ndarray,
    precision: str,
    ranges: np.ndarray | None = None,
    top_k: int = 10,
    rescore_k: int | None = None,
    use_faiss: bool = True,
    float_rows: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [q, k], scores [q, k])`` of float ``queries`` against quantized ``codes``.

    First stage: Hamming distance (binary; score = -distance) or the int8 dot product of the
    query's codes (same ``ranges``) with the corpus codes. ``rescore_k`` (>= top_k): the first
    stage keeps that many candidates, which are re-ranked by the float query against the
    corpus codes unpacked / dequantized (:func:`dequantize`), or, given ``float_rows`` (the
    float corpus, row i = code row i, e.g. a memory map: only the candidates' rows are read),
    against the corpus's float rows."""
    check_precision(precision)
    n = len(codes)
    k = min(top_k, n)
    first_k = min(max(rescore_k or k, k), n)
    q = np.asarray(queries, np.float32)
    if precision in ("binary", "ubinary"):
        ids, scores = _binary_candidates(q, _packed(codes, precision), first_k, use_faiss)
    else:
        qc = quantize(q, precision, ranges).astype(np.int32)
        sim = qc @ codes.astype(np.int32).T  # int32 accumulation, no overflow (dim * 2^14)
        ids = np.argsort(-sim, axis=1, kind="stable")[:, :first_k]
        scores = np.take_along_axis(sim, ids, 1).astype(np.float32)
    if rescore_k:
        flat = ids.reshape(-1)
        if float_rows is None:
            docs = dequantize(codes[flat], precision, ranges)
        else:  # rows read in id order (a memory map reads forward)
            order = np.argsort(flat, kind="stable")
            docs = np.empty((len(flat), float_rows.shape[1]), np.float32)
            docs[order] = np.asarray(float_rows[flat[order]], np.float32)
        docs = docs.reshape(*ids.shape, -1)
        scores = np.einsum("qd,qkd->qk", q, docs)
        order = np.argsort(-scores, axis=1, kind="stable")
        ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
    return ids[:, :k], scores[:, :k]


def _binary_candidates(
    q: np.ndarray, packed: np.ndarray, k: int, use_faiss: bool
) -> tuple[np.ndarray, np.ndarray]:
    qp = np.packbits(q > 0, axis=-1)
    if use_faiss:
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is not None:
            index = faiss.IndexBinaryFlat(packed.shape[1] * 8)
            index.add(np.ascontiguousarray(packed))
            dist, ids = index.search(np.ascontiguousarray(qp), k)
            return ids.astype(np.int64), -dist.astype(np.float32)
    dist = hamming(qp, packed)
    ids = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return ids, -np.take_along_axis(dist, ids, 1).astype(np.float32)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found_k ∩ exact_k| / k (the exact float search's top k)."""
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, exact, strict=True)]))


def quantize_file(
    float_path: Any, out_path: Any, precision: str, ranges: np.ndarray | None = None
) -> dict[str, Any]:
    """Quantize a float32 .npy (``contrasent embed``'s output) into ``out_path`` (.npy codes),
    block by block; int8/uint8 write their calibration ranges beside it
    (``OUT.ranges.npy``, ``[2, dim]``: min, max) and every precision a ``OUT.quantization.json``
    (precision, rows, dim, bytes per vector). Each file is written under a temporary name and
    renamed: a killed run leaves no half-written output."""
    import json
    import os
    from pathlib import Path

    from contrasent.core.fileio import atomic_write_text

    check_precision(precision)
    src, out = Path(float_path), Path(out_path)
    emb = np.load(src, mmap_mode="r")
    n, dim = emb.shape
    if BITS[precision] == 8 and ranges is None:
        ranges = calibration_ranges(emb)
    width = bytes_per_vector(dim, precision)
    dtype = np.int8 if precision in ("binary", "int8") else np.uint8
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.npy")
    codes = np.lib.format.open_memmap(tmp, "w+", dtype, (n, width)) if n else None
    for start in range(0, n, BLOCK_ROWS):
        codes[start : start + BLOCK_ROWS] = quantize(
            emb[start : start + BLOCK_ROWS], precision, ranges
        )
    if codes is None:
        np.save(tmp, np.empty((0, width), dtype))
    else:
        codes.flush()
        del codes
    meta = {"precision": precision, "rows": n, "dim": dim, "bytes_per_vector": width,
            "float32_bytes_per_vector": 4 * dim, "ranges": None}  # fmt: skip
    if ranges is not None:
        ranges_file = out.with_name(out.name + ".ranges.npy")
        rtmp = out.with_name(f".{out.name}.ranges.tmp-{os.getpid()}.npy")
        np.save(rtmp, np.asarray(ranges, np.float32))
        os.replace(rtmp, ranges_file)
        meta["ranges"] = ranges_file.name
    os.replace(tmp, out)
    atomic_write_text(
        out.with_name(out.name + ".quantization.json"), json.dumps(meta, indent=2) + "\n"
    )
    return meta


def read_ranges(path: str, dim: int | None = None) -> np.ndarray:
    """Calibration ranges ``[2, dim]`` from a .npy written beside an earlier int8 output."""
    try:
        ranges = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"--quantize_ranges {path}: cannot read a .npy array ({e})") from None
    if ranges.ndim != 2 or ranges.shape[0] != 2 or (dim is not None and ranges.shape[1] != dim):
        want = f"(2, {dim})" if dim is not None else "(2, dim)"
        raise UserError(f"--quantize_ranges {path}: shape {ranges.shape}, need {want}")
    return ranges.astype(np.float32)
