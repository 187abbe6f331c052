"""Training checkpoints: exact resume, atomic writes, last-K rotation.

A checkpoint is the folder ``<output_dir>/checkpoints/step-00001234/`` holding

* ``trainable.pt``: state dict of encoder + objective heads (the whole trainable module);
* ``optimizer.pt``, ``scheduler.pt`` and, with fp16, ``scaler.pt``;
* ``stream.pt``: the data stream's ``state_dict()`` (position and shuffling state);
* ``rng-<rank>.pt``: python, numpy, torch CPU and CUDA generator states of each process, and
  the private ``torch.Generator`` s of the objective (MLM masking);
* ``trainer_state.json``: step, best metric, ... and the SHA-256 of every other file. Written
  last: it marks the checkpoint complete.

Everything is first written (and fsynced) to ``checkpoints/.tmp-step-...`` and moved in place
with one ``os.replace``, so a process killed mid-write leaves at worst a ``.tmp-`` folder that is
never read (and is deleted by the next save), and the previous checkpoints intact. A checkpoint
damaged after the fact (a truncated or corrupted file: a full disk, a copy cut short) fails its
checksums: ``resume_from: latest`` then warns and takes the newest checkpoint that verifies.

Multi-node runs must write ``output_dir`` to a filesystem every node sees (each rank writes its
RNG file; rank 0 writes the rest and renames).
These ``.pt`` files are unpickled on resume: only resume from checkpoints you wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrasent.core.errors import UserError
from contrasent.core.fileio import NoSpace, atomic_write_text, no_room

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


# ----------------------------------------------------------------------------- RNG


def module_generators(module: torch.nn.Module) -> dict[str, torch.Generator]:
    """``torch.Generator`` attributes of ``module`` and its submodules (e.g. the MLM masking
    generator of an objective), by dotted name: module state dicts do not hold them."""
    found = {}
    for prefix, sub in module.named_modules():
        for name, value in vars(sub).items():
            if isinstance(value, torch.Generator):
                found[f"{prefix}.{name}" if prefix else name] = value
    return found


def rng_state(module: torch.nn.Module | None = None) -> dict[str, Any]:
    """Every generator training draws from: python, numpy, torch CPU, all CUDA devices, and the
    private generators of ``module``."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if module is not None:
        state["modules"] = {k: g.get_state() for k, g in module_generators(module).items()}
    return state


def set_rng_state(state: dict[str, Any], module: torch.nn.Module | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if module is not None:
        generators = module_generators(module)
        for name, gen_state in state.get("modules", {}).items():
            if name in generators:
                generators[name].set_state(gen_state)


# ----------------------------------------------------------------------------- finding


def is_complete(path: Path) -> bool:
    return path.is_dir() and _NAME.match(path.name) is not None and (path / STATE_FILE).is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first. Temp and half-written folders are left out."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if is_complete(p)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def verify(path: Path) -> str | None:
    """None when every file of checkpoint ``path`` matches its recorded SHA-256, else why not."""
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"unreadable {STATE_FILE} ({err})"
    for name, digest in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file) != digest:
            return f"{name} does not match its checksum (truncated or corrupted)"
    return None


def resolve_resume(resume_from: str | None, output_dir: str | os.PathLike) -> Path | None:
    """``None`` -> fresh start; ``"latest"`` -> newest complete checkpoint of ``output_dir`` that
    passes its checksums (a damaged newer one is skipped with a warning; a fresh start when there
    is none yet, so a restarted job script needs no edit); a path -> that checkpoint, which must
    be complete and intact."""
    if not resume_from:
        return None
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        for path in reversed(found):
            problem = verify(path)
            if problem is None:
                return path
            log.warning("checkpoint %s is damaged: %s; trying the one before it", path, problem)
        if found:
            raise UserError(
                f"every checkpoint in {Path(output_dir) / CHECKPOINTS} is damaged (see the "
                "warnings above); start over with --overwrite_output_dir true"
            )
        log.warning("resume_from: latest, but %s has no checkpoint yet: fresh start", output_dir)
        return None
    path = Path(resume_from)
    if not path.is_dir():
        raise UserError(f"resume_from: {path} is not a directory")
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"resume_from: {path} is not a complete checkpoint (no {STATE_FILE}); "
            "a run killed while saving leaves such folders; use an older checkpoint"
        )
    problem = verify(path)
    if problem is not None:
        raise UserError(f"resume_from: checkpoint {path} is damaged: {problem}")
    return path


# ----------------------------------------------------------------------------- saving


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    *,
    rank: int,
    is_main: bool,
    barrier: Callable[[], None],
    trainable: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    stream: Any,
    trainer_state: dict[str, Any],
    scaler: Any = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the ``keep_last`` newest.

    Called on every process (each writes its RNG state); ``barrier`` is
    ``accelerator.wait_for_everyone``.
    """
    root = Path(output_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    tmp = root / f"{_TMP_PREFIX}{final.name}"
    needed = checkpoint_bytes(trainable, optimizer)
    with no_room(root, needed, lambda: intact_note(output_dir)):
        try:
            _save_all(root, tmp, final, rank, is_main, barrier, trainable, optimizer, scheduler,
                      stream, trainer_state, scaler, step)  # fmt: skip
        except (OSError, NoSpace):  # NoSpace: from a file written atomically inside
            if is_main:  # a full disk: no half-written checkpoint keeps holding it
                shutil.rmtree(tmp, ignore_errors=True)
                with contextlib.suppress(OSError):
                    root.rmdir()  # only if empty: a first save leaves the folder as it was
            raise
    if is_main:
        for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _save_all(
    root: Path, tmp: Path, final: Path, rank: int, is_main: bool, barrier: Callable[[], None],
    trainable: torch.nn.Module, optimizer: Any, scheduler: Any, stream: Any,
    trainer_state: dict[str, Any], scaler: Any, step: int,
) -> None:  # fmt: skip
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(f"{_TMP_PREFIX}*"):  # left by a run killed mid-save
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir()
    barrier()
    _save(rng_state(trainable), tmp / f"rng-{rank}.pt")
    if is_main:
        _save(trainable.state_dict(), tmp / "trainable.pt")
        _save(optimizer.state_dict(), tmp / "optimizer.pt")
        _save(scheduler.state_dict(), tmp / "scheduler.pt")
        _save(stream.state_dict(), tmp / "stream.pt")
        if scaler is not None:
            _save(scaler.state_dict(), tmp / "scaler.pt")
    barrier()
    if is_main:
        files = {f.name: _sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        _write_json(tmp / STATE_FILE, {**trainer_state, "step": step, "files": files})
        if final.exists():  # the same step saved twice (e.g. a resumed run's end)
            shutil.rmtree(final)
        os.replace(tmp, final)


def intact_note(output_dir: str | os.PathLike) -> str:
    """What a failed save left intact: the newest complete checkpoint, best/ and final/."""
    out = Path(output_dir)
    found = list_checkpoints(out)
    kept = [f"checkpoint {found[-1].name} is intact"] if found else ["no checkpoint yet"]
    kept += [f"{name}/ is intact" for name in ("best", "final") if (out / name).is_dir()]
    how = "--resume_from latest" if found else "run again"
    return f"{', '.join(kept)}; free space, then {how}"


def state_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists, tuples): what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(state_bytes(v) for v in obj)
    return 0


def checkpoint_bytes(trainable: torch.nn.Module, optimizer: Any) -> int:
    """The size of one checkpoint: the module's state and the optimizer's (before the first
    step it has none yet: AdamW's two moments per trainable float32 parameter then)."""
    size = state_bytes(trainable.state_dict())
    moments = state_bytes(optimizer.state_dict().get("state", {}))
    if not moments:
        moments = 2 * sum(p.numel() * 4 for p in trainable.parameters() if p.requires_grad)
    return size + moments


def load_checkpoint(
    path: Path,
    *,
    rank: int,
    trainable: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    stream: Any,
    scaler: Any = None,
) -> tuple[dict[str, Any], bool]:
    """Restore everything :func:`save_checkpoint` wrote into the live objects (every process);
    returns the trainer state and whether this rank's RNG state was there (a resume on more
    processes has none for the new ranks). RNG states are restored last: call right before the
    next step."""
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    try:
        trainable.load_state_dict(_load(path / "trainable.pt"))
    except RuntimeError as exc:
        raise UserError(
            f"checkpoint {path} does not fit this model/objective configuration: {exc}"
        ) from exc
    optimizer.load_state_dict(_load(path / "optimizer.pt"))
    scheduler.load_state_dict(_load(path / "scheduler.pt"))
    stream.load_state_dict(_load(path / "stream.pt"))
    if scaler is not None and (path / "scaler.pt").is_file():
        scaler.load_state_dict(_load(path / "scaler.pt"))
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():
        set_rng_state(_load(rng_file), trainable)
        return state, True
    # resumed on more processes than saved: the caller reseeds this rank deterministically
    log.warning("%s has no RNG state for rank %d: dropout masks will differ", path, rank)
    return state, False


def _save(obj: Any, path: Path) -> None:
    """torch.save, flushed to disk before the folder is renamed into place. A write that fails
    (a full disk) raises its OSError, not the RuntimeError torch's zip writer turns it into."""
    with open(path, "wb") as f:
        writer = _Writer(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise
        f.flush()
        os.fsync(f.fileno())


class _Writer:
    """A file for torch.save that remembers the OSError of a failed write."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.f.flush()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load(path: Path) -> Any:
    # Our own files (RNG states hold numpy arrays and python tuples): full unpickling.
    return torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------- files


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
