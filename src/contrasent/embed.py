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

import fcntl
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.data.readers import REPLACED, ReadStats, iter_lines
from contrasent.errors import UserError
from contrasent.fileio import atomic_write_text

log = logging.getLogger(__name__)
ERRORS = ("strict", "replace")
FORMATS = {".npy": "npy", ".parquet": "parquet", ".jsonl": "jsonl"}
PROGRESS_MIN_LINES = 5000
MANIFEST = "manifest.json"
CHUNKS_FORMAT = "contrasent-embed-chunks"


# ----------------------------------------------------------------------------- input ranges
def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """'I/N' (0 <= I < N) -> (I, N); None stays None."""
    if spec is None or isinstance(spec, tuple):
        return spec
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise UserError(f"--shard must look like I/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {spec}: need 0 <= I < N (shards are numbered from 0)")
    return i, n


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
    `data.readers.iter_lines` (BOM dropped, CR/LF stripped, bad UTF-8 raises or is replaced)."""
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


# ----------------------------------------------------------------------------- chunk folders
def chunk_dir(output: Path, shard: tuple[int, int] | None) -> Path:
    if shard is None:
        return output.with_name(output.name + ".chunks")
    return output.with_name(f"{output.name}.shard-{shard[0]:05d}-of-{shard[1]:05d}")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    file = folder / MANIFEST
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{file}: unreadable manifest ({e}); delete {folder} to start over") from e
    if data.get("format") != CHUNKS_FORMAT:
        raise UserError(f"{file}: not a contrasent chunk manifest; delete {folder} to start over")
    return data


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _lock(folder: Path) -> Any:
    """An exclusive lock on the chunk folder (released by the OS even on SIGKILL)."""
    fh = open(folder / ".lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UserError(f"{folder}: another process is embedding into it right now") from None
    return fh


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_texts(path: Path, texts: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes("\n".join(texts).encode("utf-8", errors="surrogatepass"))
    os.replace(tmp, path)


def _chunk_texts(folder: Path, entry: dict[str, Any]) -> list[str]:
    if entry["rows"] == 0:
        return []
    return (folder / entry["texts"]).read_bytes().decode("utf-8", "surrogatepass").split("\n")


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
    folder = chunk_dir(out, shard)
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)
    try:
        manifest = _resume(folder, run)
        resumed = sum(c["rows"] for c in manifest["chunks"])
        _embed_chunks(
            encoder, src, folder, manifest, (start, end), label, batch_size, precision,
            normalize, show_progress,
        )  # fmt: skip
        totals = _totals([manifest])
        if shard is None:
            assemble([folder], out, fmt)
    finally:
        lock.close()
    if shard is None:
        shutil.rmtree(folder, ignore_errors=True)
    if totals["replaced_lines"]:
        log.warning(
            "%s: %d line(s) had invalid UTF-8, replaced by U+FFFD", src, totals["replaced_lines"]
        )
    if totals["truncated"]:
        log.info("%s: %d input(s) truncated at max_seq_length", src, totals["truncated"])
    seconds = time.perf_counter() - t0
    return {
        **totals,
        "seconds": round(seconds, 3),
        "rows_per_s": round((rows - resumed) / seconds, 1) if seconds > 0 else None,
        "resumed_rows": resumed,
        "output": str(out) if shard is None else str(folder),
    }


def output_format(out: Path) -> str:
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"output {out}: unknown format; use one of {', '.join(FORMATS)}")
    return fmt


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
        _write_manifest(folder, manifest)
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
    from tqdm.auto import tqdm

    run, chunks = manifest["run"], manifest["chunks"]
    done = sum(c["rows"] for c in chunks)
    start = chunks[-1]["end_byte"] if chunks and chunks[-1]["end_byte"] >= 0 else byte_range[0]
    skip = done if src.name.endswith(".gz") else 0  # gzip: re-read the done lines, no seek
    if show_progress is None:
        show_progress = run["rows"] - done >= PROGRESS_MIN_LINES and sys.stderr.isatty()
    bar = tqdm(
        total=run["rows"], initial=done, unit="row", desc=f"embed {src.name}",
        disable=not show_progress, dynamic_ncols=True,
    )  # fmt: skip
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
            _save_npy(folder / entry["file"], np.ascontiguousarray(emb, dtype=np.float32))
            if run["with_text"]:
                entry["texts"] = f"chunk-{k:06d}.txt"
                _save_texts(folder / entry["texts"], texts)
            chunks.append(entry)
            done += len(texts)
            manifest["complete"] = done >= run["rows"]
            _write_manifest(folder, manifest)  # the chunk counts only once recorded here
            bar.update(len(texts))
    if not manifest["complete"]:  # zero rows: nothing was written, still a finished shard
        manifest["complete"] = True
        _write_manifest(folder, manifest)


def _totals(manifests: list[dict[str, Any]]) -> dict[str, int]:
    chunks = [c for m in manifests for c in m["chunks"]]
    return {
        "rows": sum(c["rows"] for c in chunks),
        "empty_lines": sum(c["empty"] for c in chunks),
        "replaced_lines": sum(c["replaced"] for c in chunks),
        "truncated": sum(c["truncated"] for c in chunks),
    }


# ----------------------------------------------------------------------------- output
def assemble(folders: list[Path], out: Path, fmt: str | None = None) -> None:
    """Write the chunks of ``folders`` (in this order) as one output file, atomically."""
    fmt = fmt or output_format(out)
    manifests = [read_manifest(f) for f in folders]
    dim = manifests[0]["run"]["dim"]
    parts = [(f, c) for f, m in zip(folders, manifests, strict=True) for c in m["chunks"]]
    rows = sum(c["rows"] for _, c in parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{out.suffix}")
    try:
        writer = {"npy": _write_npy, "parquet": _write_parquet, "jsonl": _write_jsonl}[fmt]
        writer(tmp, parts, rows, dim, bool(manifests[0]["run"]["with_text"]))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_npy(tmp: Path, parts: list, rows: int, dim: int, with_text: bool) -> None:
    if rows == 0:  # a zero-length memmap cannot be mapped
        np.save(tmp, np.empty((0, dim), np.float32))
        return
    mat = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
    pos = 0
    for folder, c in parts:
        mat[pos : pos + c["rows"]] = np.load(folder / c["file"], mmap_mode="r")
        pos += c["rows"]
    mat.flush()
    del mat


def _write_parquet(tmp: Path, parts: list, rows: int, dim: int, with_text: bool) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise UserError("parquet output needs pyarrow: pip install 'contrasent[parquet]'") from e
    fields = [pa.field("id", pa.int64())]
    if with_text:
        fields.append(pa.field("text", pa.string()))
    fields.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    schema = pa.schema(fields)
    pos = 0
    with pq.ParquetWriter(tmp, schema) as w:
        for folder, c in parts:
            emb = np.load(folder / c["file"])
            cols = [pa.array(np.arange(pos, pos + c["rows"], dtype=np.int64))]
            if with_text:
                cols.append(pa.array(_chunk_texts(folder, c), pa.string()))
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim))
            w.write_table(pa.Table.from_arrays(cols, schema=schema))
            pos += c["rows"]
        if rows == 0:
            w.write_table(schema.empty_table())


def _write_jsonl(tmp: Path, parts: list, rows: int, dim: int, with_text: bool) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
        for folder, c in parts:
            emb = np.load(folder / c["file"])
            texts = _chunk_texts(folder, c) if with_text else None
            for j, row in enumerate(emb.tolist()):
                rec = {"text": texts[j], "embeddings": row} if texts else {"embeddings": row}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- shards
def find_shards(output: Path) -> list[Path]:
    """The chunk folders of ``output``'s shards, in shard order, after checking they form one
    complete run: all N present, each complete, same input/model/options, contiguous ranges."""
    found: dict[int, set[int]] = {}
    for p in output.parent.glob(f"{output.name}.shard-*-of-*"):
        try:
            i, n = (int(x) for x in p.name.rsplit(".shard-", 1)[1].split("-of-"))
        except ValueError:
            continue
        found.setdefault(n, set()).add(i)
    if not found:
        raise UserError(
            f"no shard folders {output.name}.shard-*-of-* next to {output}; run "
            "`contrasent embed ... --shard I/N` with the same --output first"
        )
    if len(found) > 1:
        raise UserError(
            f"shard folders of different shard counts next to {output}: N = {sorted(found)}"
        )
    n, have = next(iter(found.items()))
    missing = sorted(set(range(n)) - have)
    if missing:
        raise UserError(f"{output}: shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing")
    folders = [chunk_dir(output, (i, n)) for i in range(n)]
    manifests = [read_manifest(f) for f in folders]
    _check_shards(output, folders, manifests, n)
    return folders


def _check_shards(output: Path, folders: list[Path], manifests: list, n: int) -> None:
    for i, (f, m) in enumerate(zip(folders, manifests, strict=True)):
        if m is None or not m["complete"]:
            done = sum(c["rows"] for c in m["chunks"]) if m else 0
            total = m["run"]["rows"] if m else "?"
            raise UserError(
                f"{f}: shard {i}/{n} is partial ({done} of {total} rows); re-run its "
                f"`contrasent embed ... --shard {i}/{n}` command to finish it"
            )
    same = (
        "input",
        "input_bytes",
        "input_mtime_ns",
        "chunk_lines",
        "errors",
        "with_text",
        "dim",
        "model",
    )
    ref = manifests[0]["run"]
    for i, m in enumerate(manifests[1:], start=1):
        diff = [k for k in same if m["run"].get(k) != ref.get(k)]
        if diff:
            raise UserError(
                f"{folders[i]}: shard {i}/{n} differs from shard 0 in {', '.join(diff)}"
            )
    ranges = [m["run"]["byte_range"] for m in manifests]
    ends = [r[1] for r in ranges[:-1]]
    if (
        ranges[0][0] != 0
        or ranges[-1][1] != ref["input_bytes"]
        or [r[0] for r in ranges[1:]] != ends
    ):
        raise UserError(f"{output}: shard byte ranges {ranges} do not tile the input")


def merge_shards(output: str | os.PathLike, keep_chunks: bool = False) -> dict[str, Any]:
    """Join the finished shards of ``output`` (the --output every shard was given) into it."""
    out = Path(output)
    folders = find_shards(out)
    assemble(folders, out)
    totals = _totals([read_manifest(f) for f in folders])
    if not keep_chunks:
        for f in folders:
            shutil.rmtree(f, ignore_errors=True)
    return {**totals, "shards": len(folders), "output": str(out)}
