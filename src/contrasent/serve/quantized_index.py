"""A quantized search index: `contrasent index build --quantize binary|int8` and search over it.

The folder is an index folder (``index.json``, ``texts.jsonl`` + offsets, ``excluded.npy``)
whose vectors are codes (`contrasent.serve.quantize`), one row per non-empty text:

* ``codes.npy``: ``[rows, bytes_per_vector]`` binary (1 bit a dimension, packed, int8) or int8
  (1 byte a dimension) codes; ``code_ids.npy``: the text id of each code row (empty texts have
  no code, so they are never hits);
* ``ranges.npy`` (int8 only): the per-dimension calibration ranges ``[2, dim]`` (min, max over
  the corpus), with which queries are quantized too;
* ``embeddings.npy`` (float32, unit rows, row i = id i): only with ``--keep_float``, for
  rescoring the candidates by their float rows; without it rescoring uses the codes
  (unpacked bits / bucket centres, as sentence-transformers does) and no float corpus is stored.

``index.json`` records under ``quantization`` the precision, the bytes per vector of the codes,
of float32 and of what is stored (codes + kept floats). Search: `search_quantized` (binary by
Hamming distance with faiss ``IndexBinaryFlat`` when installed, int8 by integer dot products),
the top ``rescore_k`` optionally re-ranked by the float query; a hit's score is the first
stage's (minus the Hamming distance, the int8 dot product) or the rescoring dot product.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import UserError
from contrasent.core.fileio import atomic_write_text
from contrasent.model.similarity import normalize_rows
from contrasent.serve.quantize import (
    BLOCK_ROWS,
    bytes_per_vector,
    calibration_ranges,
    quantize,
    search_quantized,
)
from contrasent.serve.search import INDEX_FORMAT, Hit, Index, TextStore, _open_npy

INDEX_PRECISIONS = ("binary", "int8")
RESCORE_BY = ("auto", "float", "codes")


class _Rows:
    """Rows ``ids`` of a (memory-mapped) matrix, indexed like an array (for blockwise reads)."""

    def __init__(self, matrix: Any, ids: np.ndarray) -> None:
        self.matrix, self.ids = matrix, ids
        self.shape = (len(ids), matrix.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: Any) -> np.ndarray:
        return np.asarray(self.matrix[self.ids[rows]], np.float32)


class QuantizedIndex(Index):
    """Codes + texts with quantized search; see the module docstring. ``rescore_k`` (None: no
    rescoring) and ``rescore_by`` ("auto": the float rows when kept, else the codes; "float";
    "codes") apply to every search."""

    def __init__(
        self, codes: np.ndarray, code_ids: np.ndarray, texts: Any, precision: str, dim: int, *,
        ranges: np.ndarray | None = None, floats: Any = None, encoder: Any = None,
        model: dict[str, Any] | None = None, excluded: np.ndarray | None = None,
        rescore_k: int | None = None, rescore_by: str = "auto",
    ) -> None:  # fmt: skip
        if precision not in INDEX_PRECISIONS:
            raise UserError(
                f"--quantize {precision!r}: choose one of {', '.join(INDEX_PRECISIONS)}"
            )
        self.codes, self.code_ids, self.texts, self.precision = codes, code_ids, texts, precision
        self.ranges, self.embeddings, self.encoder, self.model = ranges, floats, encoder, model
        self.excluded = np.empty(0, np.int64) if excluded is None else excluded
        self._dim, self.engine, self.nprobe = dim, "quantized", None
        self.inv_norms = self._faiss = None  # Index's float-search state: unused here
        self.set_rescoring(rescore_k, rescore_by)

    def set_rescoring(self, rescore_k: int | None, rescore_by: str = "auto") -> None:
        if rescore_by not in RESCORE_BY:
            raise UserError(
                f"--rescore_by must be one of {', '.join(RESCORE_BY)}, got {rescore_by!r}"
            )
        if rescore_k is not None and rescore_k < 1:
            raise UserError(f"--rescore_k must be >= 1, got {rescore_k}")
        if rescore_by == "float" and self.embeddings is None:
            raise UserError(
                "--rescore_by float: this index keeps no float embeddings (build it with "
                "--keep_float), or rescore by the codes (--rescore_by codes)"
            )
        self.rescore_k, self.rescore_by = rescore_k, rescore_by

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def dim(self) -> int:
        return self._dim

    def quantization(self) -> dict[str, Any]:
        """What index.json records: precision, bytes per vector (codes, float32, stored)."""
        codes = bytes_per_vector(self.dim, self.precision)
        kept = self.embeddings is not None
        return {"precision": self.precision, "bytes_per_vector": codes,
                "float32_bytes_per_vector": 4 * self.dim, "floats_kept": kept,
                "stored_bytes_per_vector": codes + (4 * self.dim if kept else 0),
                "ranges": "ranges.npy" if self.ranges is not None else None}  # fmt: skip

    def search_embeddings(
        self, queries: np.ndarray, top_k: int = 5, threshold: float | None = None
    ) -> list[list[Hit]]:
        if top_k < 1:
            raise UserError(f"top_k must be >= 1, got {top_k}")
        by_float = self.rescore_k is not None and self.embeddings is not None
        by_float = by_float and self.rescore_by != "codes"
        if threshold is not None and not by_float:
            raise UserError(
                "--threshold is a cosine: on a quantized index it needs rescoring by the float "
                "embeddings (--rescore_k K on an index built with --keep_float)"
            )
        q = normalize_rows(np.atleast_2d(queries)).astype(np.float32)
        if len(q) and q.shape[1] != self.dim:
            raise UserError(
                f"query embeddings have dimension {q.shape[1]} but the index has {self.dim}: "
                "search with the model the index was built with"
            )
        if len(q) == 0 or len(self.codes) == 0:
            return [[] for _ in q]
        rows = _Rows(self.embeddings, self.code_ids) if by_float else None
        found, scores = search_quantized(q, self.codes, self.precision, self.ranges, top_k,
                                         self.rescore_k, float_rows=rows)  # fmt: skip
        ids = self.code_ids[found]
        return [
            [
                Hit(self.texts[int(i)], int(i), float(s))
                for s, i in zip(row_s, row_i, strict=True)
                if threshold is None or s >= threshold
            ]
            for row_s, row_i in zip(scores, ids, strict=True)
        ]

    def _write_meta(self, folder: Path) -> None:
        meta = {"format": INDEX_FORMAT, "version": 1, "rows": len(self), "dim": self.dim,
                "excluded_empty": len(self.excluded), "model": self.model, "faiss": None,
                "quantization": self.quantization()}  # fmt: skip
        atomic_write_text(folder / "index.json", json.dumps(meta, indent=2) + "\n")

    def save(self, folder: Any) -> None:
        raise UserError("a quantized index is written by build_index(..., quantize=...)")

    @classmethod
    def load(
        cls, folder: Any, encoder: Any = None, engine: str | None = None,
        nprobe: int | None = None, **kw: Any,
    ) -> Any:  # fmt: skip
        folder = Path(folder)
        meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        info = meta["quantization"]
        if engine is not None or nprobe is not None:
            option = f"--engine {engine}" if engine is not None else "--nprobe"
            raise UserError(
                f"{option}: {folder} is a quantized index, searched over its codes "
                "(binary: faiss IndexBinaryFlat when installed); leave it out"
            )
        floats = _open_npy(folder / "embeddings.npy") if info["floats_kept"] else None
        ranges = np.load(folder / "ranges.npy") if info.get("ranges") else None
        texts = TextStore(folder / "texts.jsonl", np.load(folder / "texts.offsets.npy"))
        return cls(np.load(folder / "codes.npy", mmap_mode="r"), np.load(folder / "code_ids.npy"),
                   texts, info["precision"], int(meta["dim"]), ranges=ranges, floats=floats,
                   encoder=encoder, model=meta.get("model"),
                   excluded=np.load(folder / "excluded.npy"), **kw)  # fmt: skip


def quantize_folder(
    work: Path, precision: str, keep_float: bool, texts: Any, **kw: Any
) -> QuantizedIndex:
    """Codes of ``work/embeddings.npy`` (unit rows, id-indexed) for the non-empty texts, written
    into ``work`` (codes.npy, code_ids.npy, ranges.npy for int8; embeddings.npy removed unless
    ``keep_float``); int8 ranges calibrated on the corpus's non-empty rows."""
    emb = np.load(work / "embeddings.npy", mmap_mode="r")
    excluded = np.load(work / "excluded.npy")
    ids = np.setdiff1d(np.arange(len(emb)), excluded).astype(np.int64)
    rows = _Rows(emb, ids)
    ranges = calibration_ranges(rows) if precision == "int8" else None
    width = bytes_per_vector(emb.shape[1], precision)
    tmp = work / f".codes.tmp-{os.getpid()}.npy"
    codes = np.lib.format.open_memmap(tmp, "w+", np.int8, (len(ids), width))
    for start in range(0, len(ids), BLOCK_ROWS):
        codes[start : start + BLOCK_ROWS] = quantize(
            rows[start : start + BLOCK_ROWS], precision, ranges
        )
    codes.flush()
    del codes
    os.replace(tmp, work / "codes.npy")
    np.save(work / "code_ids.npy", ids)
    if ranges is not None:
        np.save(work / "ranges.npy", ranges)
    index = QuantizedIndex(np.load(work / "codes.npy", mmap_mode="r"), ids, texts, precision,
                           int(emb.shape[1]), ranges=ranges, floats=emb if keep_float else None,
                           excluded=excluded, **kw)  # fmt: skip
    index._write_meta(work)
    if not keep_float:
        del emb, rows
        (work / "embeddings.npy").unlink()
    return index


def load_index(folder: str | os.PathLike, encoder: Any = None, **kw: Any) -> Index:
    """Open a saved index folder, float (`Index.load`) or quantized (`QuantizedIndex.load`).
    ``rescore_k``/``rescore_by`` only apply to a quantized one (one clear line otherwise)."""
    meta_file = Path(folder) / "index.json"
    quantized = False
    if meta_file.is_file():
        try:
            quantized = bool(json.loads(meta_file.read_text(encoding="utf-8")).get("quantization"))
        except ValueError:
            quantized = False  # Index.load reports the unreadable file
    if quantized:
        return QuantizedIndex.load(folder, encoder=encoder, **kw)
    rescore_k, rescore_by = kw.pop("rescore_k", None), kw.pop("rescore_by", "auto")
    if rescore_k is not None or rescore_by != "auto":
        raise UserError(
            f"--rescore_k/--rescore_by: {folder} is a float index (exact scores already); they "
            "apply to an index built with --quantize"
        )
    return Index.load(folder, encoder=encoder, **kw)
