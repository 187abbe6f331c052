"""Bulk embedding of a text file (one text a line, .txt or .txt.gz), resumable and shardable.

Row i of the output is line i of the input, empty lines included, so rows stay aligned with the
file. Nothing is held in memory: the input is read once to count and validate it, then embedded
``chunk_lines`` lines at a time. Each finished chunk is written (temp file + rename) into a chunk
folder next to the output and recorded in its ``manifest.json``; a run that is killed and started
again with the same command continues after the last recorded chunk, so no row is lost or
repeated. When every chunk is done the output is assembled (temp + rename) and the chunk folder
removed. Output format from the suffix: ``.npy`` (one float32 matrix, memory-mappable),
``.parquet`` (columns ``id`` = line number, ``embedding``, optionally ``text``) or ``.jsonl``
(DeCLUTR's format: ``{"embeddings": [...]}`` a line, optionally with ``"text"``).

``shard=(i, n)`` embeds only the i-th of n contiguous byte ranges of the file (each starts at the
first line that begins inside it, so a process seeks to its range and never reads the rest) into
``<output>.shard-0000i-of-0000n/``; :func:`merge_shards` joins finished shards in input order.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import UserError
from contrasent.core.fileio import make_folder, no_room
from contrasent.core.options import parse_shard
from contrasent.data.readers import REPLACED, ReadStats, iter_lines
from contrasent.serve.chunks import (
    CHUNKS_FORMAT,
    chunk_dir,
    kept_note,
    lock,
    read_manifest,
    save_npy,
    save_texts,
    totals,
    write_manifest,
)
from contrasent.serve.merge import assemble, merge_shards, output_format

log = logging.getLogger(__name__)
ERRORS = ("strict", "replace")
PROGRESS_MIN_LINES = 5000


# ----------------------------------------------------------------------------- input ranges
def line_start_at_or_after(path: Path, offset: int) -> int:
    """Byte offset of the first line that begins at or after ``offset`` (file size if none)."""
    if offset <= 0:
        return 0
    with open(path, "rb") as f:
        f.seek(offset - 1)
        f.readline()  # finish the line holding byte offset-1; the next one starts after it
        return f.tell()


def shard_range(path: Path, shard: tuple[int, int] | None) -> tuple[int, int | None]:
    """[start, end) byte range of a shard; (0, None) for the whole file."""
    if shard is None:
        return 0, None
    if path.name.endswith(".gz"):
        raise UserError(
            f"{path}: --shard needs an uncompressed file (a gzip stream cannot be split)"
        )
    i, n = shard
    size = path.stat().st_size
    return line_start_at_or_after(path, i * size // n), line_start_at_or_after(
        path, (i + 1) * size // n
    )


def iter_range(
    path: Path, start: int, end: int | None, errors: str, stats: ReadStats, label: str
) -> Iterator[tuple[str, int]]:
    """(text, byte offset after the line) for each line in [start, end), decoded like
    `data.lines.iter_lines` (BOM dropped, CR/LF stripped, bad UTF-8 raises or is replaced)."""
    if path.name.endswith(".gz"):  # not seekable: stream from the start, offsets unknown (-1)
        on_error = "raise" if errors == "strict" else "replace"
        hint = "use errors='replace' (--errors replace)"
        for _, text in iter_lines(path, stats, on_error, hint=hint):
            yield text, -1
        return
    with open(path, "rb") as f:
        f.seek(start)
        pos, lineno = start, 0
        while end is None or pos < end:
            raw = f.readline()
            if not raw:
                return
            pos += len(raw)
            lineno += 1
            stats.lines += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if errors == "strict":
                    raise UserError(
                        f"{label}:{lineno}: invalid UTF-8 (byte {e.start} of the line: "
                        f"{raw[e.start : e.start + 4]!r}); fix the file or use --errors replace"
                    ) from None
                text = raw.decode("utf-8", errors="replace")
                stats.info[REPLACED] = stats.info.get(REPLACED, 0) + 1
            if pos == len(raw):  # the file's first line
                text = text.removeprefix("\ufeff")
            yield text.rstrip("\r\n"), pos


def read_all_lines(path: Path, errors: str = "strict") -> list[str]:
    """Every line of a (small enough) text file, empty ones included."""
    if not path.is_file():
        raise UserError(f"{path}: no such text file")
    return [t for t, _ in iter_range(path, 0, None, errors, ReadStats(str(path)), str(path))]


# ----------------------------------------------------------------------------- embedding
def embed_file(
    encoder: Any,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    batch_size: int = 32,
    errors: str = "strict",
    chunk_lines: int = 20000,
    precision: str = "fp32",
    show_progress: bool | None = None,
    shard: str | tuple[int, int] | None = None,
    with_text: bool = False,
    normalize: bool | None = None,
    model_id: str | None = None,
) -> dict[str, Any]:
    """Embed every line of ``input_path`` into ``output_path`` (.npy/.parquet/.jsonl).

    ``errors``: "strict" raises UserError naming file and line on invalid UTF-8 (before any
    embedding work); "replace" substitutes U+FFFD and counts the lines. ``chunk_lines``: lines
    per resumable chunk. ``shard``: "I/N" embeds only that shard into its own chunk folder (join
    them with :func:`merge_shards`). ``model_id`` names the model in the manifest (a resumed run
    must use the same one). Returns a summary dict (rows, empty/replaced/truncated counts,
    seconds, rows_per_s, resumed_rows, output or chunk folder).
    """
    if errors not in ERRORS:
        raise UserError(f"unknown errors mode {errors!r}; valid: {', '.join(ERRORS)}")
    if chunk_lines < 1:
        raise UserError(f"chunk_lines must be >= 1, got {chunk_lines}")
    src, out = Path(input_path), Path(output_path)
    if not src.is_file():
        raise UserError(
            f"input file {src} not found" + (" (it is a directory)" if src.is_dir() else "")
        )
    if out.is_dir():
        raise UserError(f"output {out} is a directory; give a file path (.npy, .parquet, .jsonl)")
    fmt = output_format(out)
    shard = parse_shard(shard)
    start, end = shard_range(src, shard)
    label = str(src) if shard is None else f"{src} (shard {shard[0]}/{shard[1]} from byte {start})"
    t0 = time.perf_counter()
    stats = ReadStats(str(src))
    for _ in iter_range(src, start, end, errors, stats, label):  # count + validate, early
        pass
    rows = stats.lines
    if rows == 0:
        log.warning("%s: no lines to embed%s", src, "" if shard is None else " in this shard")
    run = {
        "input": str(src.resolve()),
        "input_bytes": src.stat().st_size,
        "input_mtime_ns": src.stat().st_mtime_ns,
        "shard": list(shard) if shard else None,
        "byte_range": [start, end],
        "rows": rows,
        "chunk_lines": chunk_lines,
        "errors": errors,
        "with_text": with_text,
        "dim": int(encoder.hidden_size),
        "model": _model_record(encoder, model_id, normalize),
    }
    folder = make_folder(chunk_dir(out, shard), "chunk folder")
    held = lock(folder)
    try:
        manifest = _resume(folder, run)
        resumed = sum(c["rows"] for c in manifest["chunks"])
        with no_room(folder, None, lambda: kept_note(folder, manifest)):
            _embed_chunks(
                encoder, src, folder, manifest, (start, end), label, batch_size, precision,
                normalize, show_progress,
            )  # fmt: skip
        counts = totals([manifest])
        if shard is None:
            with no_room(out.parent, None, lambda: kept_note(folder, manifest)):
                assemble([folder], out, fmt)
    finally:
        held.release()
    if shard is None:
        shutil.rmtree(folder, ignore_errors=True)
    if counts["replaced_lines"]:
        log.warning(
            "%s: %d line(s) had invalid UTF-8, replaced by U+FFFD", src, counts["replaced_lines"]
        )
    if counts["truncated"]:
        log.info("%s: %d input(s) truncated at max_seq_length", src, counts["truncated"])
    seconds = time.perf_counter() - t0
    return {
        **counts,
        "seconds": round(seconds, 3),
        "rows_per_s": round((rows - resumed) / seconds, 1) if seconds > 0 else None,
        "resumed_rows": resumed,
        "output": str(out) if shard is None else str(folder),
    }


def _model_record(encoder: Any, model_id: str | None, normalize: bool | None) -> dict[str, Any]:
    rec = dict(encoder.config_dict()) if hasattr(encoder, "config_dict") else {}
    rec["normalize_output"] = normalize
    rec["name_or_path"] = model_id or getattr(getattr(encoder, "model", None), "name_or_path", None)
    return rec


def _resume(folder: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The folder's manifest if it belongs to this run (same input, model, options), else a new
    one; a folder from a different run is an error, never silently mixed."""
    manifest = read_manifest(folder)
    if manifest is None:
        manifest = {
            "format": CHUNKS_FORMAT,
            "version": 1,
            "run": run,
            "chunks": [],
            "complete": False,
        }
        write_manifest(folder, manifest)
        return manifest
    diff = sorted(
        k for k in set(run) | set(manifest["run"]) if run.get(k) != manifest["run"].get(k)
    )
    if diff:
        raise UserError(
            f"{folder} holds chunks of a different run ({', '.join(diff)} changed); "
            "re-run the original command to finish it, or delete the folder to start over"
        )
    for c in manifest["chunks"]:  # every recorded chunk must still be there and whole
        arr = np.load(folder / c["file"], mmap_mode="r")
        if arr.shape != (c["rows"], run["dim"]):
            raise UserError(f"{folder / c['file']}: damaged chunk; delete {folder} to start over")
    log.info("%s: resuming after %d complete chunk(s)", folder, len(manifest["chunks"]))
    return manifest


def _embed_chunks(
    encoder: Any,
    src: Path,
    folder: Path,
    manifest: dict[str, Any],
    byte_range: tuple[int, int | None],
    label: str,
    batch_size: int,
    precision: str,
    normalize: bool | None,
    show_progress: bool | None,
) -> None:
    from contrasent.core.progress import progress

    run, chunks = manifest["run"], manifest["chunks"]
    done = sum(c["rows"] for c in chunks)
    start = chunks[-1]["end_byte"] if chunks and chunks[-1]["end_byte"] >= 0 else byte_range[0]
    skip = done if src.name.endswith(".gz") else 0  # gzip: re-read the done lines, no seek
    if show_progress is None:
        show_progress = run["rows"] - done >= PROGRESS_MIN_LINES
    bar = progress(run["rows"], f"embed {src.name}", "row", done, disable=not show_progress)
    stats = ReadStats(str(src))
    lines = iter_range(src, start, byte_range[1], run["errors"], stats, label)
    with bar:
        for _ in range(skip):
            next(lines)
        while done < run["rows"]:
            texts, end_byte = [], -1
            replaced_before = stats.info.get(REPLACED, 0)
            for text, pos in lines:
                texts.append(text)
                end_byte = pos
                if len(texts) == run["chunk_lines"]:
                    break
            if not texts:
                raise UserError(f"{label}: changed while being embedded (fewer lines than counted)")
            info: dict[str, int] = {}
            emb = encoder.encode(
                texts, batch_size=batch_size, show_progress=False, precision=precision,
                normalize=normalize, stats=info,
            )  # fmt: skip
            k = len(chunks)
            entry = {
                "file": f"chunk-{k:06d}.npy",
                "rows": len(texts),
                "end_byte": end_byte,
                "empty": sum(not t.strip() for t in texts),
                "replaced": stats.info.get(REPLACED, 0) - replaced_before,
                "truncated": int(info.get("truncated", 0)),
            }
            save_npy(folder / entry["file"], np.ascontiguousarray(emb, dtype=np.float32))
            if run["with_text"]:
                entry["texts"] = f"chunk-{k:06d}.txt"
                save_texts(folder / entry["texts"], texts)
            chunks.append(entry)
            done += len(texts)
            manifest["complete"] = done >= run["rows"]
            write_manifest(folder, manifest)  # the chunk counts only once recorded here
            bar.update(len(texts))
    if not manifest["complete"]:  # zero rows: nothing was written, still a finished shard
        manifest["complete"] = True
        write_manifest(folder, manifest)


__all__ = ["assemble", "chunk_dir", "embed_file", "iter_range", "merge_shards", "read_all_lines"]
