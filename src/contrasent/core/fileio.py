"""File helpers shared by every module that writes user-visible files: atomic file writes,
atomic folder swaps (a folder replaced by a complete new one, never left half-written), and one
line for a write that fails for lack of room (a full disk, a quota, a read-only file system)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from contrasent.core.errors import UserError

#: a write that failed because the file system has no room for it: not a bug, not a traceback
NO_ROOM = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}


class NoSpace(UserError):
    """A write failed for lack of space, for a quota or a read-only file system; the message
    names the folder, the bytes needed (when known) and what is still intact."""

    #: raised by a single file write that knows only its own file: an enclosing ``no_room``
    #: (which knows what else in its folder is intact) says it again with its own detail
    fallback = False


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes (for this user) on the file system holding ``folder`` or its nearest existing
    parent; None when it cannot be told."""
    path = Path(folder).absolute()
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    try:
        return shutil.disk_usage(existing).free if existing else None
    except OSError:
        return None


Intact = str | Callable[[], str] | None


def no_room_error(
    err: OSError, folder: str | os.PathLike, needed: int | None = None, intact: Intact = None
) -> NoSpace:
    """The one-line error for ``err`` (an errno of :data:`NO_ROOM`) while writing in ``folder``."""
    text = f"cannot write in {folder}: {NO_ROOM.get(err.errno or 0, err.strerror)}"
    free = free_bytes(folder)
    if needed:
        text += f" (needs about {human_bytes(needed)}"
        text += ")" if free is None else f", {human_bytes(free)} free)"
    elif free is not None and err.errno != errno.EROFS:
        text += f" ({human_bytes(free)} free)"
    said = intact() if callable(intact) else intact
    if said:
        text += f"; {said}"
    return NoSpace(text)


@contextlib.contextmanager
def no_room(
    folder: str | os.PathLike, needed: int | None = None, intact: Intact = None
) -> Iterator[None]:
    """Turn a write in the block that fails for lack of room (:data:`NO_ROOM`) into one
    :class:`NoSpace` line naming ``folder``, ``needed`` bytes and what is ``intact`` (a string,
    or a function called only when it fails). The block cleans up its own temp files."""
    try:
        yield
    except NoSpace as err:
        if err.fallback and isinstance(err.__cause__, OSError):
            raise no_room_error(err.__cause__, folder, needed, intact) from err.__cause__
        raise
    except OSError as err:
        if err.errno not in NO_ROOM:
            raise
        raise no_room_error(err, folder, needed, intact) from err


def make_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``mkdir -p path``; a folder that cannot be created is one line naming it (a path under
    /proc, a file in the way, no permission, a full or read-only disk)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if err.errno in NO_ROOM:
            no_space = no_room_error(err, path)
            no_space.fallback = True
            raise no_space from err
        raise UserError(f"cannot create the {what} {path}: {err.strerror}") from err
    return path


#: errnos of a path a command cannot read or write: one line naming it, never a traceback
PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, *NO_ROOM}


def path_error_line(err: OSError) -> str | None:
    """One line for an OSError about a path (:data:`PATH_ERRNOS`, with a file name) that no
    command turned into its own message; None for any other error (a bug: keep its traceback)."""
    if err.errno not in PATH_ERRNOS or not err.filename:
        return None
    name = Path(os.fsdecode(err.filename))
    if err.errno in NO_ROOM:
        return str(no_room_error(err, name if name.is_dir() else name.parent))
    return f"{name}: {err.strerror}"


def room_warning(folder: str | os.PathLike, needed: int, what: str) -> str | None:
    """A warning when the file system of ``folder`` has less than ``needed`` bytes free."""
    free = free_bytes(folder)
    if free is None or free >= needed:
        return None
    return (
        f"{folder} has {human_bytes(free)} free but {what} needs about {human_bytes(needed)}: "
        "the run will stop when it writes one (nothing written before is lost)"
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; see :func:`atomic_writer`."""
    with atomic_writer(path, "wb", len(data)) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike, mode: str = "w", needed: int | None = None
) -> Iterator[IO]:
    """A file written piece by piece (text in UTF-8, or bytes with ``mode="wb"``) into a temp
    file in the same folder, fsynced and renamed over ``path`` when the block ends, deleted if
    it raises: a crash leaves the old file (or none), never a half-written one. The file gets
    the permissions of an ordinary write (0666 minus the umask), not the temp file's 0600, so
    colleagues can read a run on a shared folder. A full disk is one :class:`NoSpace` line
    saying the old file is as it was (an enclosing :func:`no_room` says more)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=make_folder(path.parent, "folder")
        )
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        if err.errno not in NO_ROOM:
            raise
        said = f"{path.name} there is as it was before (no part of the new one was left)"
        no_space = no_room_error(err, path.parent, needed, said)
        no_space.fallback = True
        raise no_space from err


def reserve(path: str | os.PathLike) -> None:
    """Allocate the blocks of the (sparse) file ``path`` now: a memory map's page written on a
    full disk kills the process with SIGBUS, this fails with an ordinary ENOSPC instead."""
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


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
