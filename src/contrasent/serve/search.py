"""Cosine similarity and nearest-neighbour search over sentence embeddings.

`Index` holds one embedding row per text (row i = id i; for a corpus file, id = line number from
0). Texts that are empty or whitespace-only keep their id but are never returned as hits.

Search is exact by default: a blocked matrix product over the (possibly memory-mapped) embedding
matrix, keeping a running top-k, so memory stays at O(queries x block) for millions of rows. With
``engine="faiss"`` (the optional ``faiss-cpu`` package) an IVF index answers approximately; small
indexes (< ``IVF_MIN_ROWS``) get faiss' exact flat index instead, so results equal the exact ones.
``engine="auto"`` picks faiss IVF from ``AUTO_FAISS_ROWS`` rows on when faiss is installed.

A saved index is a folder: ``index.json`` (rows, dim, model used, faiss settings),
``embeddings.npy`` (L2-normalised float32, memory-mapped on load), ``texts.jsonl`` (one JSON
string a line) with ``texts.offsets.npy`` (byte offsets: a text is read only when it is a hit),
``excluded.npy`` (ids of empty texts) and, for faiss, ``faiss.index``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from contrasent.core.errors import UserError, where
from contrasent.core.fileio import atomic_write_text, reserve
from contrasent.model.similarity import BLOCK_BYTES, exact_search, normalize_rows
from contrasent.serve.faiss import build_faiss, faiss_available, import_faiss

log = logging.getLogger(__name__)
ENGINES = ("auto", "exact", "faiss")
AUTO_FAISS_ROWS = 200_000  # "auto" switches to approximate search from here (faiss installed)
INDEX_FORMAT = "contrasent-index"


class Hit(NamedTuple):
    """One search result: the text, its id (row / line number from 0) and its cosine score."""

    text: str
    id: int
    score: float


# ----------------------------------------------------------------------------- texts on disk
class TextStore(Sequence):
    """Texts of a saved index, read by byte offset from ``texts.jsonl`` (one JSON string a line)."""

    def __init__(self, path: Path, offsets: np.ndarray) -> None:
        self.path, self.offsets = path, offsets
        self._fh = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        if self._fh is None:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open for repeated lookups
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        self._fh.seek(start)
        return json.loads(self._fh.read(end - start))

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "offsets": self.offsets, "_fh": None}


def write_texts(texts: Any, folder: Path) -> tuple[int, np.ndarray]:
    """Write ``texts`` (any iterable of str) as texts.jsonl + texts.offsets.npy; returns
    (count, ids of empty/whitespace-only texts)."""
    offsets, excluded, pos = [0], [], 0
    with open(folder / "texts.jsonl", "wb") as f:
        for i, text in enumerate(texts):
            line = (json.dumps(text, ensure_ascii=False) + "\n").encode("utf-8")
            f.write(line)
            pos += len(line)
            offsets.append(pos)
            if not text.strip():
                excluded.append(i)
    np.save(folder / "texts.offsets.npy", np.asarray(offsets, dtype=np.int64))
    return len(offsets) - 1, np.asarray(excluded, dtype=np.int64)


# ----------------------------------------------------------------------------- the index
class Index:
    """Embeddings + texts with cosine search; see the module docstring for layout and engines.

    ``embeddings``: [n, dim] array (or memmap); ``texts``: a sequence of n strings.
    ``normalized=True`` promises unit-length rows (skips computing norms). ``encoder`` embeds
    string queries (anything with ``encode(list[str]) -> array``); ``model`` records how to load
    it again (saved in index.json).
    """

    def __init__(
        self,
        embeddings: Any,
        texts: Sequence[str],
        *,
        encoder: Any = None,
        normalized: bool = False,
        engine: str = "auto",
        nprobe: int | None = None,
        model: dict[str, Any] | None = None,
        excluded: np.ndarray | None = None,
        _faiss: tuple[Any, dict[str, Any]] | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise UserError(f"unknown search engine {engine!r}; valid: {', '.join(ENGINES)}")
        if getattr(embeddings, "ndim", 2) != 2:
            raise UserError(f"embeddings must be a matrix [n, dim], got shape {embeddings.shape}")
        if len(embeddings) != len(texts):
            raise UserError(f"{len(embeddings)} embedding rows but {len(texts)} texts")
        self.embeddings, self.texts, self.encoder = embeddings, texts, encoder
        self.model = model
        if excluded is None:
            excluded = np.asarray([i for i, t in enumerate(texts) if not t.strip()], np.int64)
        self.excluded = excluded
        self.inv_norms = None if normalized else _inv_norms(embeddings)
        self._faiss = _faiss
        self.nprobe = nprobe
        self.engine = self._resolve_engine(engine)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_texts(
        cls, encoder: Any, texts: Sequence[str], batch_size: int = 64, **kw: Any
    ) -> Index:
        """Embed ``texts`` with ``encoder`` (normalised) and index them (ids = list positions)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        emb = normalize_rows(encoder.encode(texts, batch_size=batch_size))
        return cls(emb, texts, encoder=encoder, normalized=True, model=_model_info(encoder), **kw)

    @classmethod
    def from_files(
        cls,
        embeddings_path: str | os.PathLike,
        texts_path: str | os.PathLike,
        encoder: Any = None,
        errors: str = "strict",
        **kw: Any,
    ) -> Index:
        """Index a .npy embedding matrix (memory-mapped) whose row i belongs to line i of a text
        file (what ``contrasent embed`` writes: one row per line, empty lines included)."""
        from contrasent.serve.embed import read_all_lines

        emb_path = Path(embeddings_path)
        emb = _open_npy(emb_path)
        texts = read_all_lines(Path(texts_path), errors)
        if len(texts) != len(emb):
            raise UserError(
                f"{emb_path} has {len(emb)} rows but {texts_path} has {len(texts)} lines; row i "
                "must be the embedding of line i (as `contrasent embed` writes it)"
            )
        return cls(emb, texts, encoder=encoder, model=_model_info(encoder), **kw)

    @classmethod
    def load(
        cls, folder: str | os.PathLike, encoder: Any = None, engine: str | None = None, **kw: Any
    ) -> Index:
        """Open a saved index (embeddings memory-mapped, texts read on demand)."""
        folder = Path(folder)
        meta_file = folder / "index.json"
        if not meta_file.is_file():
            raise UserError(f"{folder} is not a contrasent index (no index.json)")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except ValueError as e:
            raise UserError(f"{where(meta_file)}: cannot read JSON: {e}") from e
        if meta.get("format") != INDEX_FORMAT:
            raise UserError(f"{meta_file}: not a {INDEX_FORMAT} file")
        if meta.get("quantization"):
            raise UserError(
                f"{folder} is a quantized index: open it with "
                "contrasent.serve.quantized_index.load_index"
            )
        emb = _open_npy(folder / "embeddings.npy")
        texts = TextStore(folder / "texts.jsonl", np.load(folder / "texts.offsets.npy"))
        faiss_info = meta.get("faiss")
        loaded = None
        if faiss_info and (folder / "faiss.index").is_file() and engine != "exact":
            loaded = (import_faiss().read_index(str(folder / "faiss.index")), faiss_info)
        engine = engine or ("faiss" if loaded else "exact")
        return cls(
            emb,
            texts,
            encoder=encoder,
            normalized=True,
            engine=engine,
            model=meta.get("model"),
            excluded=np.load(folder / "excluded.npy"),
            _faiss=loaded,
            **kw,
        )

    def save(self, folder: str | os.PathLike) -> None:
        """Write the index folder atomically (temp folder, then rename over ``folder``)."""
        folder = Path(folder).absolute()
        if folder.exists() and (
            not folder.is_dir() or (any(folder.iterdir()) and not (folder / "index.json").is_file())
        ):
            raise UserError(f"{folder} exists and is not an index folder (refusing to replace it)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            self._write(tmp)
            from contrasent.core.fileio import swap_into_place

            swap_into_place(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _copy_normalized(self, path: Path) -> None:
        """Write the unit-length embedding rows to ``path`` (.npy), block by block."""
        n, dim = self.embeddings.shape
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
        try:
            out = np.lib.format.open_memmap(tmp, "w+", np.float32, (n, dim)) if n else None
            if out is not None:
                reserve(tmp)  # a full disk: ENOSPC now, not SIGBUS on a page of the map
            block = max(1, BLOCK_BYTES // (4 * max(dim, 1)))
            for start in range(0, n, block):
                rows = np.asarray(self.embeddings[start : start + block], dtype=np.float32)
                out[start : start + block] = (
                    rows if self.inv_norms is None else normalize_rows(rows)
                )
            if out is None:
                np.save(tmp, np.empty((0, dim), np.float32))
            else:
                out.flush()
                del out
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write(self, tmp: Path) -> None:
        n = len(self)
        self._copy_normalized(tmp / "embeddings.npy")
        write_texts((self.texts[i] for i in range(n)), tmp)
        np.save(tmp / "excluded.npy", self.excluded)
        self._write_meta(tmp)

    def _write_meta(self, folder: Path) -> None:
        """index.json (+ faiss.index when this index searches with faiss)."""
        faiss_info = None
        if self.engine == "faiss":
            index, faiss_info = self._faiss_index()
            import_faiss().write_index(index, str(folder / "faiss.index"))
        n, dim = self.embeddings.shape
        meta = {
            "format": INDEX_FORMAT,
            "version": 1,
            "rows": n,
            "dim": dim,
            "excluded_empty": len(self.excluded),
            "model": self.model,
            "faiss": faiss_info,
        }
        atomic_write_text(folder / "index.json", json.dumps(meta, indent=2) + "\n")

    # ------------------------------------------------------------------ search
    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        top_k: int = 5,
        threshold: float | None = None,
        batch_size: int = 64,
    ) -> list[Hit] | list[list[Hit]]:
        """Ranked hits (text, id, score) with score >= ``threshold`` (None: no cut), at most
        ``top_k`` of them (fewer when the index is smaller). A single string (or 1-D vector)
        gives one list, a list of queries a list of lists. Empty indexes give empty lists."""
        single = isinstance(queries, str) or (isinstance(queries, np.ndarray) and queries.ndim == 1)
        if isinstance(queries, np.ndarray):
            q = np.atleast_2d(queries)
        else:
            texts = [queries] if single else list(queries)
            if self.encoder is None:
                raise UserError("this index has no encoder: pass encoder= to embed text queries")
            q = self.encoder.encode(texts, batch_size=batch_size) if texts else np.empty((0, 0))
            q = q.reshape(len(texts), -1) if texts else np.empty((0, self.dim), np.float32)
        hits = self.search_embeddings(q, top_k=top_k, threshold=threshold)
        return hits[0] if single else hits

    def search_embeddings(
        self, queries: np.ndarray, top_k: int = 5, threshold: float | None = None
    ) -> list[list[Hit]]:
        if top_k < 1:
            raise UserError(f"top_k must be >= 1, got {top_k}")
        q = normalize_rows(np.atleast_2d(queries))
        if len(q) and q.shape[1] != self.dim:
            raise UserError(
                f"query embeddings have dimension {q.shape[1]} but the index has {self.dim}: "
                "search with the model the index was built with"
            )
        if self.engine == "faiss":
            scores, ids = self._faiss_search(q, top_k)
        else:
            scores, ids = exact_search(q, self.embeddings, top_k, self.inv_norms, self.excluded)
        return [
            [
                Hit(self.texts[int(i)], int(i), float(s))
                for s, i in zip(row_s, row_i, strict=True)
                if i >= 0 and (threshold is None or s >= threshold)
            ]
            for row_s, row_i in zip(scores, ids, strict=True)
        ]

    # ------------------------------------------------------------------ internals
    def _resolve_engine(self, engine: str) -> str:
        if engine == "auto":
            big = len(self) - len(self.excluded) >= AUTO_FAISS_ROWS
            return "faiss" if big and faiss_available() else "exact"
        if engine == "faiss":
            import_faiss()
        return engine

    def _faiss_index(self) -> tuple[Any, dict[str, Any]]:
        if self._faiss is None:
            unit = self.embeddings if self.inv_norms is None else _Scaled(self)
            self._faiss = build_faiss(unit, self.excluded)
        return self._faiss

    def _faiss_search(self, q: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        index, info = self._faiss_index()
        if info.get("type") == "ivf":
            import_faiss().extract_index_ivf(index).nprobe = int(self.nprobe or info["nprobe"])
        k = max(0, min(top_k, len(self) - len(self.excluded)))
        if k == 0 or len(q) == 0:
            return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
        scores, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return scores, ids


class _Scaled:
    """Row-normalised view of an index's raw embeddings (for building faiss from raw rows)."""

    def __init__(self, index: Index) -> None:
        self.src, self.inv, self.shape = index.embeddings, index.inv_norms, index.embeddings.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        return np.asarray(self.src[rows], dtype=np.float32) * self.inv[rows][:, None]


def _inv_norms(embeddings: Any) -> np.ndarray:
    """1/||row|| for every row (0 for zero rows), computed block by block."""
    n, dim = embeddings.shape
    out = np.empty(n, np.float32)
    block = max(1, BLOCK_BYTES // (4 * max(dim, 1)))
    for start in range(0, n, block):
        norms = np.linalg.norm(np.asarray(embeddings[start : start + block], np.float32), axis=1)
        out[start : start + block] = np.divide(
            1.0, norms, out=np.zeros_like(norms), where=norms > 0
        )
    return out


def _open_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path}: no such embeddings file")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable .npy file ({e})") from e
    if arr.ndim != 2:
        raise UserError(f"{path}: expected a [rows, dim] matrix, got shape {arr.shape}")
    return arr


def _model_info(encoder: Any) -> dict[str, Any] | None:
    """How to load ``encoder`` again for queries (recorded in index.json)."""
    if encoder is None:
        return None
    info = dict(encoder.config_dict()) if hasattr(encoder, "config_dict") else {}
    source = getattr(encoder, "source", None) or getattr(
        getattr(encoder, "model", None), "name_or_path", None
    )
    if source is not None:
        info["name_or_path"] = source
    return info
