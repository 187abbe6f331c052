"""Embed a text file (one text a line, .txt or .txt.gz) into a .npy matrix, streaming.

Row i of the output is line i of the input, empty lines included, so rows stay aligned with the
file. The file is read twice (count + validate, then embed chunk by chunk into a memory-mapped
temp .npy next to the output) and never held in memory; the temp file is renamed over the output
only when complete and is deleted on any error, so a crash leaves no partial output.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.data.readers import REPLACED, ReadStats, iter_lines
from contrasent.errors import UserError

log = logging.getLogger(__name__)
ERRORS = ("strict", "replace")
PROGRESS_MIN_LINES = 5000


def _lines(path: Path, errors: str, stats: ReadStats) -> Iterator[str]:
    """Every line of the file (empty ones too), through the data layer's streaming reader."""
    on_error = "raise" if errors == "strict" else "replace"
    hint = "use errors='replace' (--errors replace)"
    for _, text in iter_lines(path, stats, on_error, hint=hint):
        yield text


def _chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in lines:
        chunk.append(text)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _count(path: Path, errors: str) -> tuple[int, int]:
    """First streaming pass: line count and bad-UTF-8 line count (strict mode fails here, early)."""
    stats = ReadStats(str(path))
    for _ in _lines(path, errors, stats):
        pass
    return stats.lines, stats.info.get(REPLACED, 0)


def embed_file(
    encoder: Any,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    batch_size: int = 32,
    errors: str = "strict",
    chunk_lines: int = 20000,
    precision: str = "fp32",
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Embed every line of `input_path` into a float32 .npy at `output_path` (row i = line i).

    ``errors``: "strict" raises UserError naming file and line on invalid UTF-8 (before any
    embedding work); "replace" substitutes U+FFFD and reports how many lines it touched.
    ``chunk_lines`` texts are encoded at a time (length-sorted within the chunk).
    Returns {"rows", "replaced_lines", "empty_lines", "seconds", "output"}.
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
        raise UserError(f"output {out} is a directory; give a .npy file path")
    start = time.perf_counter()
    rows, replaced = _count(src, errors)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.npy"
    try:
        empty = _fill(
            encoder, src, tmp, rows, errors, chunk_lines, batch_size, precision, show_progress
        )
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if replaced:
        log.warning("%s: %d line(s) had invalid UTF-8, replaced by U+FFFD", src, replaced)
    seconds = time.perf_counter() - start
    return {
        "rows": rows,
        "replaced_lines": replaced,
        "empty_lines": empty,
        "seconds": round(seconds, 3),
        "output": str(out),
    }


def _fill(
    encoder: Any,
    src: Path,
    tmp: Path,
    rows: int,
    errors: str,
    chunk_lines: int,
    batch_size: int,
    precision: str,
    show_progress: bool | None,
) -> int:
    """Second pass: encode chunk by chunk into a memory-mapped .npy; returns the empty-line count."""
    from tqdm.auto import tqdm

    shape = (rows, encoder.hidden_size)
    if rows == 0:  # a zero-length memmap cannot be mapped
        np.save(tmp, np.empty(shape, dtype=np.float32))
        return 0
    mat = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    if show_progress is None:
        show_progress = rows >= PROGRESS_MIN_LINES and sys.stderr.isatty()
    bar = tqdm(total=rows, unit="line", desc=f"embed {src.name}", disable=not show_progress)
    done = empty = 0
    with bar:
        for chunk in _chunks(_lines(src, errors, ReadStats(str(src))), chunk_lines):
            if done + len(chunk) > rows:
                raise UserError(f"{src}: changed while being embedded (more than {rows} lines)")
            mat[done : done + len(chunk)] = encoder.encode(
                chunk, batch_size=batch_size, show_progress=False, precision=precision
            )
            done += len(chunk)
            empty += sum(not t.strip() for t in chunk)
            bar.update(len(chunk))
    if done != rows:  # the file changed between the two passes
        raise UserError(f"{src}: had {rows} lines when counted but {done} when embedded")
    mat.flush()
    del mat
    return empty
