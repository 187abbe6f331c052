"""Building a search index folder from a corpus file, streaming (`contrasent index build`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import UserError
from contrasent.core.fileio import atomic_write_text, make_folder, no_room
from contrasent.serve.search import Index, TextStore, _open_npy, write_texts


def build_index(
    encoder: Any,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    embeddings_path: str | os.PathLike | None = None,
    batch_size: int = 64,
    errors: str = "strict",
    engine: str = "auto",
    model: dict[str, Any] | None = None,
    show_progress: bool | None = None,
    precision: str = "fp32",
    quantize: str | None = None,
    keep_float: bool = False,
) -> Index:
    """Index every line of a corpus file (id = line number from 0) into ``output_dir``, streaming.

    Embeds with `contrasent.serve.embed.embed_file` (chunked and resumable: a killed build continues
    when started again) unless ``embeddings_path`` gives a matrix whose row i is line i. The
    folder is assembled under a temporary name and renamed at the end. ``quantize`` ("binary",
    "int8") stores codes instead of float rows (`contrasent.serve.quantized_index`; the floats
    too with ``keep_float``).
    """

    src, out = Path(input_path), Path(output_dir).absolute()
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "index.json").is_file())
    ):
        raise UserError(f"{out} exists and is not an index folder (refusing to replace it)")
    work = make_folder(out.parent / f".{out.name}.building", "index build folder")
    note = f"what is built so far is kept in {work}; free space and run the same command again"
    with no_room(out.parent, None, note):
        return _build(encoder, src, out, work, embeddings_path, batch_size, errors, engine,
                      model, show_progress, precision, quantize, keep_float)  # fmt: skip


def _build(
    encoder: Any, src: Path, out: Path, work: Path, embeddings_path: Any, batch_size: int,
    errors: str, engine: str, model: dict[str, Any] | None, show_progress: bool | None,
    precision: str, quantize: str | None = None, keep_float: bool = False,
) -> Index:  # fmt: skip
    from contrasent.data.readers import ReadStats
    from contrasent.serve.embed import embed_file, iter_range

    emb_file, stamp_file = work / "embeddings.npy", work / "embeddings.json"
    if not src.is_file():
        raise UserError(f"input file {src} not found")
    stat = src.stat()
    stamp = json.dumps(
        [
            str(src.resolve()),
            stat.st_size,
            stat.st_mtime_ns,
            model,
            embeddings_path and str(embeddings_path),
            precision,
        ]
    )
    if not (emb_file.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp):
        emb_file.unlink(missing_ok=True)  # a finished embedding of another corpus/model: redo
        if embeddings_path is not None:
            given = _open_npy(Path(embeddings_path))
            Index(given, _Count(len(given)), excluded=np.empty(0, np.int64))._copy_normalized(
                emb_file
            )
        else:  # chunked and resumable: a killed build continues from its last chunk
            embed_file(
                encoder, src, emb_file, batch_size=batch_size, errors=errors, normalize=True,
                show_progress=show_progress, model_id=(model or {}).get("name_or_path"),
                precision=precision,
            )  # fmt: skip
        atomic_write_text(stamp_file, stamp)
    emb = _open_npy(emb_file)
    lines = (t for t, _ in iter_range(src, 0, None, errors, ReadStats(str(src)), str(src)))
    count, excluded = write_texts(lines, work)
    if count != len(emb):
        shutil.rmtree(work, ignore_errors=True)
        raise UserError(
            f"{embeddings_path or emb_file} has {len(emb)} rows but {src} has {count} lines; row i "
            "must be the embedding of line i (as `contrasent embed` writes it)"
        )
    if count == len(excluded):
        shutil.rmtree(work, ignore_errors=True)
        raise UserError(f"{src}: no non-empty lines, nothing to index")
    np.save(work / "excluded.npy", excluded)
    texts = TextStore(work / "texts.jsonl", np.load(work / "texts.offsets.npy"))
    if quantize is not None:  # codes (+ floats if kept) and index.json; stamp kept until done
        from contrasent.serve.quantized_index import quantize_folder

        del emb
        quantize_folder(work, quantize, keep_float, texts, model=model)
    else:
        index = Index(emb, texts, encoder=encoder, normalized=True, engine=engine, model=model,
                      excluded=excluded)  # fmt: skip
        index._write_meta(work)
    stamp_file.unlink(missing_ok=True)
    from contrasent.core.fileio import swap_into_place
    from contrasent.serve.quantized_index import load_index

    swap_into_place(work, out)
    return load_index(out, encoder=encoder)


class _Count(Sequence):
    """A placeholder text sequence of n texts (only its length is used)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        return "x"
