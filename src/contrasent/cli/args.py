"""What several commands share: the encoder options and the checks on input and output paths.

Every check here needs no model, so ``validate()`` can run them all before anything loads and a
mistake costs seconds, not a model load.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contrasent.core.errors import UserError
from contrasent.model.pooling import Pooling


@dataclass
class ModelArgs:
    """Which encoder to load.

    Args:
        model: Hugging Face hub id, local model path, or sentence-transformers directory.
        pooling: Pooling over token states; default: the directory's own (ST) or mean.
        normalize: L2-normalise embeddings; default: the directory's own (ST) or off.
        max_seq_length: Truncate inputs to this many tokens; default: the model's.
        device: "cpu", "cuda", "cuda:1", ...; default: CUDA when available, else CPU.
        precision: Inference precision: fp32; bf16 (weights held in bf16, pooling and
            normalisation in fp32: fast on CPUs with AMX or AVX512-BF16 and on GPUs); fp16
            (GPU only); auto: bf16 where the device has fast bf16 matmuls, else fp32 (CPU) or
            fp16 (GPU). `contrasent env` shows what this CPU has.
        threads: CPU threads; default: every usable CPU (affinity, cgroup quota), with
            OpenMP's passive wait (OMP_WAIT_POLICY=PASSIVE unless set); with an active wait
            policy fewer when the machine is loaded ($OMP_NUM_THREADS if set).
        batch_size: Sentences per forward pass.
        backend: "onnx" runs a folder written by `contrasent export` with ONNX Runtime.
        file_name: ONNX file of that folder (e.g. model_qint8_avx512_vnni.onnx); default
            model.onnx.
        dim: Embed at the first N dimensions, L2-normalised again (a Matryoshka model's
            smaller sizes); default: the full dimension.
    """

    model: str = ""
    pooling: Pooling | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    device: str | None = None
    precision: Literal["fp32", "fp16", "bf16", "auto"] = "fp32"
    threads: int | None = None
    batch_size: int = 64
    backend: Literal["torch", "onnx"] = "torch"
    file_name: str | None = None
    dim: int | None = None

    def validate(self) -> None:
        """Every check that needs no model (so a mistake costs no model-loading time)."""
        if self.dim is not None and self.dim < 1:
            raise UserError(f"--dim must be >= 1, got {self.dim}")
        if not self.model:
            raise UserError("--model is required (a hub id, a model folder or an ST folder)")
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise UserError(f"--max_seq_length must be >= 1, got {self.max_seq_length}")
        if self.backend == "onnx":
            from contrasent.model.onnx import check_export

            check_export(self.model, self.file_name, self.pooling)
            if self.precision not in ("fp32", "auto"):
                raise UserError(f"--precision {self.precision}: --backend onnx runs fp32 or int8")
        elif self.file_name is not None:
            raise UserError("--file_name picks an ONNX file: it needs --backend onnx")

    def load(self) -> Any:
        from contrasent.model.dims import apply_dim
        from contrasent.model.encoder import Encoder

        quiet_transformers()
        encoder = Encoder.from_pretrained(
            self.model,
            pooling=self.pooling,
            normalize=self.normalize,
            max_seq_length=self.max_seq_length,
            device=self.device,
            backend=self.backend,
            file_name=self.file_name,
        )
        return apply_dim(encoder, self.dim)


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-weight load/save bars are noise on a CLI
    hf_logging.set_verbosity_error()


def model_path(model: str) -> str:
    """An existing local path made absolute (the output may be read from another folder)."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


# ----------------------------------------------------------------------------- paths
def check_input_file(path: str, option: str) -> None:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{option} {path}: no such file")
    if not p.is_file():
        raise UserError(f"{option} {path} is a folder; give a text file (one text a line)")


def check_suffix(path: str, option: str, suffixes: tuple[str, ...]) -> None:
    if Path(path).suffix.lower() not in suffixes:
        raise UserError(
            f"{option} {path}: unknown format; use a name ending in {', '.join(suffixes)}"
        )


def check_output_file(path: str, option: str) -> None:
    """An output file can be written there: not a folder, its folder exists or can be made."""
    p = Path(path)
    if p.is_dir():
        raise UserError(
            f"{option} {path} is a folder; give a file name (e.g. {p / 'results.json'})"
        )
    _check_writable(path, option, p.absolute().parents)


def check_output_folder(path: str, option: str, marker: str = "", kind: str = "") -> None:
    """An output folder can be written there: not a file, the nearest existing folder writable.

    With a ``marker``, the command replaces the folder whole (writes a new one beside it, then
    renames): it must be absent, empty, or an earlier output of this ``kind`` (it holds
    ``marker``), and it is its parent that must be writable.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        if marker:
            raise UserError(f"{option} {path} exists and is a file; give a folder")
        raise UserError(f"{option} {path} is a file; give a folder (it is created if missing)")
    if marker and p.is_dir() and any(p.iterdir()) and not (p / marker).is_file():
        raise UserError(
            f"{option} {path} exists and is not {kind} (no {marker}); refusing to replace it"
        )
    folders = p.absolute().parents if marker else [p.absolute(), *p.absolute().parents]
    _check_writable(path, option, folders)


def _check_writable(path: str, option: str, folders: Iterable[Path]) -> None:
    """The first existing one of ``folders`` (nearest first) is a folder we may write in."""
    parent = next(a for a in folders if a.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {parent}")


def check_faiss(engine: str | None) -> None:
    if engine == "faiss":
        from contrasent.serve.faiss import faiss_available

        if not faiss_available():
            raise UserError("--engine faiss needs the faiss-cpu package: pip install faiss-cpu")
