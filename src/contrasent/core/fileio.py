"""File helpers shared by every module that writes user-visible files: atomic file writes and
atomic folder swaps (a folder replaced by a complete new one, never left half-written)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, fsync, then
    ``os.replace``. A crash leaves the old file (or none), never a half-written one. The file
    gets the permissions of an ordinary write (0666 minus the umask), not the temp file's 0600,
    so colleagues can read a run on a shared folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def follow_umask(folder: str | os.PathLike) -> None:
    """Give every file and folder under ``folder`` the permissions an ordinary write would
    (0666 / 0777 minus the umask): some writers (safetensors, temp files) create 0600 files."""
    mask = _umask()
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


# ----------------------------------------------------------------------------- folder swaps
def temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """``.<name>.<kind>-<pid>-<random>`` beside ``path`` (the names repair_swaps looks for)."""
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def swap_into_place(tmp: Path, path: Path) -> None:
    """Rename tmp -> path; an existing path is moved aside first and deleted after (a kill
    between the two renames is undone by :func:`repair_swaps`)."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = temp_sibling(path, "old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def repair_swaps(path: Path, marker: str) -> None:
    """Finish or undo a folder swap that a killed process left half done, and delete its
    leftovers: with ``path`` missing, the newest COMPLETE new folder (it holds ``marker``, the
    file written last) takes its place, else the old one is put back."""
    parent, name = path.parent, path.name
    if not parent.is_dir():
        return
    tmps = sorted(parent.glob(f".{name}.tmp-*"), key=lambda p: p.stat().st_mtime)
    olds = sorted(parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not path.exists():
        done = [t for t in tmps if (t / marker).is_file()]
        if done:
            os.replace(done[-1], path)
        elif olds:
            os.replace(olds[-1], path)
    for leftover in [*tmps, *olds]:
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)


def link_model(src: Path, path: Path) -> None:
    """``path`` as a copy of the model folder ``src`` made of hard links (no second copy of the
    weights on disk; a plain copy where the filesystem has no hard links), swapped into place."""
    tmp = temp_sibling(path)
    try:
        shutil.copytree(src, tmp, copy_function=_link_or_copy)
        swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
