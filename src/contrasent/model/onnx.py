"""Run an encoder exported by `contrasent.model.export` with ONNX Runtime, behind `Encoder`'s encode API.

The exported graph computes the whole embedding (transformer, pooling, Dense heads) as its
``sentence_embedding`` output; normalisation, batching and ordering happen here. Texts are
tokenized once and batched longest-first, as `Encoder.encode` does, and padded with numpy (no
torch round trip). `Encoder.from_pretrained(dir, backend="onnx")` returns an `OnnxEncoder`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrasent.core.errors import UserError, where
from contrasent.model.inputs import checked_texts, pad_features, pad_ids, tokenize_longest_first

META_FILE = "contrasent_onnx.json"  # written by contrasent.model.export next to the .onnx files
DEFAULT_FILE = "model.onnx"
PROGRESS_MIN_TEXTS = 5000


def session_options(threads: int | None = None) -> Any:
    """ORT session options used for every contrasent session: all graph optimisations (ORT fuses
    attention, LayerNorm and GELU at load), ``threads`` intra-op threads (None: ORT's default,
    one per physical core, or $OMP_NUM_THREADS as torchrun sets it per process), one inter-op
    thread (the graph is a single chain)."""
    import onnxruntime as ort

    omp = os.environ.get("OMP_NUM_THREADS", "")
    threads = threads or (int(omp) if omp.isdigit() else None)

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    return so


def check_export(
    path: str | os.PathLike, file_name: str | None = None, pooling: str | None = None
) -> tuple[dict[str, Any], Path]:
    """The metadata and ONNX file of a `contrasent export` folder (UserError when it is not one,
    the file is missing, or ``pooling`` differs from the exported one); loads no model."""
    root = Path(os.fspath(path)).expanduser()
    meta_file = root / "onnx" / META_FILE
    if not meta_file.is_file():
        raise UserError(
            f"{root}: no onnx/{META_FILE}; backend 'onnx' runs folders written by "
            "`contrasent export MODEL --output DIR --format onnx`"
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{where(meta_file)}: cannot read JSON: {e}") from e
    name = Path(file_name or DEFAULT_FILE).name  # "onnx/x.onnx" and "x.onnx" both work
    model_file = root / "onnx" / name
    if not model_file.is_file():
        have = ", ".join(sorted(p.name for p in (root / "onnx").glob("*.onnx")))
        raise UserError(f"{model_file} not found (this export has: {have})")
    if pooling is not None and pooling != meta["pooling"]:
        raise UserError(
            f"{root} was exported with pooling {meta['pooling']!r} (part of the ONNX graph); "
            f"export again with --pooling {pooling} to use that pooling"
        )
    return meta, model_file


class OnnxEncoder:
    """An exported encoder on ONNX Runtime: ``encode`` / ``similarity`` like `Encoder`."""

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        meta: dict[str, Any],
        normalize: bool,
        max_seq_length: int,
        source: str,
        file_name: str,
    ) -> None:
        self.session, self.tokenizer, self.meta = session, tokenizer, meta
        self.pooling = meta["pooling"]
        self.normalize = bool(normalize)
        self.max_seq_length = int(max_seq_length)
        self.do_lower_case = bool(meta.get("do_lower_case", False))
        self.source, self.file_name = source, file_name
        self.input_names = [i.name for i in session.get_inputs()]
        self.hidden_size = int(meta["hidden_size"])
        self._pads = pad_ids(tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_seq_length: int | None = None,
        device: Any = None,
        file_name: str | None = None,
        threads: int | None = None,
    ) -> OnnxEncoder:
        """Open ``path/onnx/<file_name>`` (default model.onnx) of a `contrasent export` folder."""
        import onnxruntime as ort
        from transformers import AutoTokenizer

        root = Path(os.fspath(path)).expanduser()
        meta, model_file = check_export(root, file_name, pooling)
        dev = str(device or "cpu")
        if not dev.startswith("cpu"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(f"device {dev!r}: this onnxruntime has no CUDA provider")
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": _cuda_index(dev)})]
        else:
            providers = ["CPUExecutionProvider"]
        session = ort.InferenceSession(
            str(model_file), session_options(threads), providers=providers
        )
        tokenizer = AutoTokenizer.from_pretrained(str(root))
        return cls(
            session,
            tokenizer,
            meta,
            meta["normalize"] if normalize is None else normalize,
            max_seq_length or meta["max_seq_length"],
            str(root),
            model_file.name,
        )

    def config_dict(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
            "backend": "onnx",
            "file_name": self.file_name,
        }

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize: bool | None = None,
        show_progress: bool | None = None,
        device: Any = None,
        precision: str = "fp32",
        stats: dict[str, int] | None = None,
    ) -> np.ndarray:
        """Embed texts -> float32 [N, hidden_size] in input order (as `Encoder.encode`)."""

        texts = checked_texts(texts, batch_size)
        if precision not in ("fp32", "auto"):  # auto: what the file holds
            raise UserError(
                f"precision {precision!r}: the ONNX backend runs the exported file as it is "
                "(fp32, or int8 with file_name=...)"
            )
        normalize = self.normalize if normalize is None else normalize
        out = np.empty((len(texts), self.hidden_size), dtype=np.float32)
        if not texts:
            return out
        enc, order = tokenize_longest_first(self, texts, stats)
        feats = {k: enc[k] for k in self.input_names if k in enc}
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        if show_progress is None:
            show_progress = len(texts) >= PROGRESS_MIN_TEXTS
        from contrasent.core.progress import progress

        with progress(len(texts), "encode", "sent", disable=not show_progress) as bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                batch = pad_features(feats, idx, self._pads, left)
                if "token_type_ids" in self.input_names and "token_type_ids" not in batch:
                    batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
                out[idx] = self.session.run(["sentence_embedding"], batch)[0]
                bar.update(len(idx))
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out

    def similarity(self, a: Any, b: Any, batch_size: int = 64) -> float | np.ndarray:
        from contrasent.model.similarity import similarity

        return similarity(self, a, b, batch_size=batch_size)


def _cuda_index(device: str) -> int:
    _, _, idx = device.partition(":")
    return int(idx) if idx.isdigit() else 0
