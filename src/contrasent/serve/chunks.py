"""Chunk folders of `contrasent.serve.embed`: manifest, lock, atomic chunk files, totals.

A chunk folder holds ``manifest.json`` (the run's identity and every finished chunk, rewritten
atomically after each chunk) and ``chunk-000000.npy`` (+ ``.txt`` texts when kept) files, each
written to a temp name and renamed, so a killed run leaves only whole chunks behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import UserError
from contrasent.core.fileio import atomic_write_bytes, atomic_write_text
from contrasent.core.runlock import RunLock

MANIFEST = "manifest.json"
CHUNKS_FORMAT = "contrasent-embed-chunks"


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


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def lock(folder: Path) -> Any:
    """The folder's run lock (:mod:`contrasent.core.runlock`): a second process embedding into
    it is refused with one line naming the first; released by the OS even on SIGKILL."""
    held = RunLock(folder, "contrasent embed")
    held.acquire()
    return held


def save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk: no partial chunk left beside the whole ones
        tmp.unlink(missing_ok=True)
        raise


def save_texts(path: Path, texts: list[str]) -> None:
    atomic_write_bytes(path, "\n".join(texts).encode("utf-8", errors="surrogatepass"))


def kept_note(folder: Path, manifest: dict[str, Any]) -> str:
    """What a failed write left intact in a chunk folder, and how to go on."""
    rows = sum(c["rows"] for c in manifest["chunks"])
    return (
        f"{len(manifest['chunks'])} finished chunk(s) ({rows} rows) in {folder} are intact; "
        "free space and run the same command again to continue"
    )


def chunk_texts(folder: Path, entry: dict[str, Any]) -> list[str]:
    if entry["rows"] == 0:
        return []
    return (folder / entry["texts"]).read_bytes().decode("utf-8", "surrogatepass").split("\n")


def totals(manifests: list[dict[str, Any]]) -> dict[str, int]:
    chunks = [c for m in manifests for c in m["chunks"]]
    return {
        "rows": sum(c["rows"] for c in chunks),
        "empty_lines": sum(c["empty"] for c in chunks),
        "replaced_lines": sum(c["replaced"] for c in chunks),
        "truncated": sum(c["truncated"] for c in chunks),
    }
