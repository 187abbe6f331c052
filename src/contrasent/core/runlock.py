"""One folder, one run: an advisory lock file in an output folder (`train`, `embed`, `compare`).

``<folder>/.contrasent.lock`` holds who runs there (pid, host, start time, command, job) and is
``flock``-ed for the whole run, so on one host a second process is refused at once and a killed
one's lock disappears with it (the kernel drops it). Where ``flock`` does not reach (another
node of a shared file system), the file's contents decide: a live heartbeat (the holder touches
the file every :data:`HEARTBEAT_S` seconds) means the folder is in use; a holder on this host
whose pid is gone, or a heartbeat older than :data:`STALE_S`, is a crashed run whose lock is
taken over with a note. The processes of one torchrun / accelerate job share the lock: the main
process takes it, the others only check that nobody else holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from contrasent.core.errors import UserError
from contrasent.core.fileio import make_folder

log = logging.getLogger(__name__)

LOCK_FILE = ".contrasent.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # 10 missed heartbeats: the holder is gone (killed node, lost mount)
_HELD: dict[Path, RunLock] = {}  # the folders this process holds (a nested lock is a no-op)


def job_id() -> str:
    """What the processes of one launched job share (torchrun / accelerate set these); a lone
    process is its own job."""
    env = os.environ
    if env.get("MASTER_ADDR") and env.get("MASTER_PORT") and env.get("WORLD_SIZE"):
        run = env.get("TORCHELASTIC_RUN_ID", "")
        return f"{run}@{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    return f"pid {os.getpid()}@{socket.gethostname()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def describe(info: dict[str, Any]) -> str:
    started = datetime.fromtimestamp(info.get("started", 0), timezone.utc)
    return (
        f"{info.get('command', 'contrasent')} (pid {info.get('pid')} on {info.get('host')}, "
        f"started {started:%Y-%m-%d %H:%M:%S} UTC)"
    )


def _read(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def _holder(path: Path, wait_s: float = 2.0) -> dict[str, Any] | None:
    """The record of the process whose flock refused us. It writes the record just after taking
    the lock, so a process refused in that instant waits briefly for it rather than naming
    nobody."""
    deadline = time.monotonic() + wait_s
    while True:
        info = _read(path)
        if info or time.monotonic() >= deadline:
            return info
        time.sleep(0.01)


def _stale(info: dict[str, Any], path: Path) -> str | None:
    """Why the holder ``info`` is gone (None: it may still run)."""
    if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
        return f"pid {info.get('pid')} is no longer running"
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return None
    if age > STALE_S:
        return f"its heartbeat stopped {age:.0f} s ago"
    return None


class RunLock:
    """The lock of ``folder`` for ``command``; use as a context manager or acquire()/release()."""

    def __init__(self, folder: str | os.PathLike, command: str, is_main: bool = True) -> None:
        self.folder, self.command, self.is_main = Path(folder), command, is_main
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._outer: RunLock | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made = False  # this lock created the folder

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _refuse(self, info: dict[str, Any] | None) -> UserError:
        who = describe(info) if info else "another process"
        return UserError(
            f"{self.folder} is in use by {who}; wait for it to finish, stop it, or choose "
            f"another output folder (a crashed run's lock is taken over by itself: {self.path})"
        )

    def check(self) -> None:
        """Refuse when another job holds the folder (the non-main processes of a job)."""
        info = _read(self.path)
        if info and info.get("job") != job_id() and _stale(info, self.path) is None:
            raise self._refuse(info)

    def acquire(self) -> None:
        if not self.is_main:
            self.check()
            return
        key = self.folder.absolute()
        outer = _HELD.get(key)
        if outer is not None:  # this process holds it already (the CLI around train())
            self._outer = outer
            return
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.folder} exists and is not a folder")
        self._made = not self.folder.exists()
        make_folder(self.folder)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise UserError(f"cannot write in {self.folder}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._refuse(_holder(self.path)) from None
        info = _read(self.path)  # flock is ours: a holder written here is on another host, or gone
        if info and info.get("job") != job_id():
            same_host = info.get("host") == socket.gethostname()
            why = "it no longer holds the lock" if same_host else _stale(info, self.path)
            if why is None:
                os.close(fd)
                raise self._refuse(info)
            log.warning("%s: taking over the lock of %s: %s", self.folder, describe(info), why)
        self._fd = fd
        record = {
            "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": self.command, "job": job_id(),
        }  # fmt: skip
        data = (json.dumps(record) + "\n").encode()
        os.pwrite(fd, data, 0)  # then cut: the file is never seen empty while this run holds it
        os.ftruncate(fd, len(data))
        self._thread = threading.Thread(target=self._beat, name="contrasent-lock", daemon=True)
        self._thread.start()
        _HELD[key] = self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # the folder went away: nothing left to guard
                return

    def release(self) -> None:
        """Free the folder: the file is emptied (never deleted: a process that opened it keeps
        locking the same file) and unlocked. A folder this lock created and nothing else wrote
        in (a run refused before it started) is removed, so a mistake leaves nothing behind."""
        if self._fd is None:
            return
        _HELD.pop(self.folder.absolute(), None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        if self._made:  # still flock-ed: a process that opened the file now is refused
            with contextlib.suppress(OSError):
                if [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
                    self.path.unlink()
                    self.folder.rmdir()
        os.close(self._fd)  # drops the flock
        self._fd = None
