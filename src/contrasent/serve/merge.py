"""Assembling chunk folders into one output file (.npy, .parquet, .jsonl) and merging shards."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import UserError
from contrasent.core.fileio import make_folder, no_room, reserve
from contrasent.serve.chunks import chunk_dir, chunk_texts, read_manifest, totals
from contrasent.serve.formats import FORMATS


def output_format(out: Path) -> str:
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"output {out}: unknown format; use one of {', '.join(FORMATS)}")
    return fmt


def assemble(folders: list[Path], out: Path, fmt: str | None = None) -> None:
    """Write the chunks of ``folders`` (in this order) as one output file, atomically."""
    fmt = fmt or output_format(out)
    manifests = [read_manifest(f) for f in folders]
    dim = manifests[0]["run"]["dim"]
    parts = [(f, c) for f, m in zip(folders, manifests, strict=True) for c in m["chunks"]]
    rows = sum(c["rows"] for _, c in parts)
    make_folder(out.parent)
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
    reserve(tmp)  # a full disk: ENOSPC now, not SIGBUS on a page of the map
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
                cols.append(pa.array(chunk_texts(folder, c), pa.string()))
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim))
            w.write_table(pa.Table.from_arrays(cols, schema=schema))
            pos += c["rows"]
        if rows == 0:
            w.write_table(schema.empty_table())


def _write_jsonl(tmp: Path, parts: list, rows: int, dim: int, with_text: bool) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
        for folder, c in parts:
            emb = np.load(folder / c["file"])
            texts = chunk_texts(folder, c) if with_text else None
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
    with no_room(out.parent, None, "every shard's chunk folder is intact; free space and run "
                 "`contrasent embed merge` again"):  # fmt: skip
        assemble(folders, out)
    counts = totals([read_manifest(f) for f in folders])
    if not keep_chunks:
        for f in folders:
            shutil.rmtree(f, ignore_errors=True)
    return {**counts, "shards": len(folders), "output": str(out)}
