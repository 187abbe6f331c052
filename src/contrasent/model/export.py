"""Export an encoder to ONNX (fp32, optionally int8) in the layout sentence-transformers loads.

The output folder is a sentence-transformers directory (`Encoder.save`) plus

    onnx/model.onnx                      fp32: what SentenceTransformer(dir, backend="onnx") loads
    onnx/model_qint8_avx512_vnni.onnx    int8 (--quantize int8), named as sentence-transformers'
                                         export_dynamic_quantized_onnx_model names its files:
                                         model_{qint8|quint8}_{arm64|avx2|avx512|avx512_vnni}.onnx
    onnx/contrasent_onnx.json            pooling, lengths, files and their measured parity

The graph (torch's TorchScript exporter over the model in eager attention, whose pattern ONNX
Runtime fuses into its Attention kernel at load) has two outputs: ``last_hidden_state`` for
sentence-transformers, which pools on its side, and ``sentence_embedding`` (pooling and Dense
heads inside the graph) for `contrasent.model.onnx.OnnxEncoder`. int8 is ONNX Runtime's dynamic
quantization with the settings of sentence-transformers' presets (symmetric per-channel int8
weights, uint8 activations; avx2: uint8 weights), so no calibration data is needed.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrasent.core.errors import UserError
from contrasent.core.fileio import atomic_write_text, make_folder, no_room, swap_into_place
from contrasent.model.onnx import META_FILE, OnnxEncoder
from contrasent.model.pooling import HIDDEN_STATE_POOLINGS

log = logging.getLogger(__name__)
FORMATS = ("onnx",)
QUANTIZE = ("int8",)
# sentence-transformers / optimum presets: target -> (weight type, reduce_range)
INT8_TARGETS = {
    "avx512_vnni": ("qint8", False),
    "avx512": ("qint8", False),
    "avx2": ("quint8", False),
    "arm64": ("qint8", False),
}
FP32_MIN_COSINE = 0.9999  # the fp32 graph must reproduce the torch encoder this closely
PROBES = [  # parity check sentences: short, long (truncated), empty, non-ASCII, punctuation
    "A man is playing a guitar.",
    "Someone is playing an instrument on stage while the crowd sings along.",
    "",
    "Ünïcödé: naïve café, Zürich, São Paulo. 日本語の文章です。",
    "The quick brown fox jumps over the lazy dog. " * 80,
    "What is the capital of France?",
    "emoji 🙂🚀 and symbols ∑∫√ ≠ ≤",
    "a",
]


def detect_int8_target() -> str:
    """The sentence-transformers int8 preset for this CPU (from /proc/cpuinfo flags)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512bw" in flags else "avx2"


def int8_file_name(target: str) -> str:
    weights, _ = INT8_TARGETS[target]
    return f"model_{weights}_{target}.onnx"


def export_onnx(
    model: Any,
    output_dir: str | os.PathLike,
    quantize: str | None = None,
    int8_target: str | None = None,
    opset: int = 17,
) -> dict[str, Any]:
    """Write ``model`` (an `Encoder`) to ``output_dir`` as described in the module docstring.

    Returns the contents of contrasent_onnx.json (files with their min cosine vs torch on
    `PROBES`). Raises UserError when the fp32 graph does not reproduce the torch encoder.
    """
    if quantize not in (None, *QUANTIZE):
        raise UserError(f"unknown --quantize {quantize!r}; valid: {', '.join(QUANTIZE)}")
    target = int8_target or detect_int8_target()
    if target not in INT8_TARGETS:
        raise UserError(f"unknown int8 target {target!r}; valid: {', '.join(INT8_TARGETS)}")
    out = Path(output_dir).expanduser().absolute()
    if out.exists() and any(out.iterdir()) and not (out / "modules.json").is_file():
        raise UserError(f"{out} exists and is not a model directory (refusing to replace it)")
    encoder = model.to("cpu").eval()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    make_folder(out.parent)
    kept = f"{out} is unchanged" if out.exists() else "nothing was written"
    with no_room(out.parent, None, kept):
        meta = _export(encoder, tmp, out, quantize, target, opset)
    if not meta["sentence_transformers_onnx"]:
        log.warning(
            "pooling %r needs every layer's hidden states, which sentence-transformers' ONNX "
            "backend does not pass on: %s runs with contrasent's backend='onnx' only",
            encoder.pooling,
            out,
        )
    return meta


class _Graph(torch.nn.Module):
    """Encoder forward with named tensor inputs, returning (last_hidden_state, embedding).

    The embedding is `Encoder._embed` itself (pooling + Dense heads, no normalisation); the
    token states are caught with a forward hook on the HF model, so there is one forward pass.
    """

    def __init__(self, encoder: Any, names: list[str]) -> None:
        super().__init__()
        self.encoder, self.names = encoder, names
        self._hidden: torch.Tensor | None = None
        self.hook = encoder.model.register_forward_hook(self._catch)

    def _catch(self, module: Any, args: Any, output: Any) -> None:
        self._hidden = output.last_hidden_state

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.encoder._embed(dict(zip(self.names, tensors, strict=True)), False)
        return self._hidden, emb


def _export(
    encoder: Any, tmp: Path, out: Path, quantize: str | None, target: str, opset: int
) -> dict[str, Any]:
    """Write the export into ``tmp`` and swap it into ``out``; nothing is left on failure."""
    try:
        encoder.save(tmp)
        (tmp / "onnx").mkdir()
        inputs = _export_graph(encoder, tmp / "onnx" / "model.onnx", opset)
        meta: dict[str, Any] = {
            **encoder.config_dict(),
            "do_lower_case": encoder.do_lower_case,
            "hidden_size": encoder.hidden_size,
            "inputs": inputs,
            "outputs": ["last_hidden_state", "sentence_embedding"],
            "opset": opset,
            "sentence_transformers_onnx": encoder.pooling not in HIDDEN_STATE_POOLINGS,
            "files": {},
        }
        atomic_write_text(tmp / "onnx" / META_FILE, json.dumps(meta, indent=2) + "\n")
        files = ["model.onnx"]
        if quantize == "int8":
            files.append(int8_file_name(target))
            quantize_int8(tmp / "onnx" / "model.onnx", tmp / "onnx" / files[-1], target)
        meta["files"] = {f: _parity(encoder, tmp, f) for f in files}
        fp32 = meta["files"]["model.onnx"]["min_cosine_vs_torch"]
        if fp32 < FP32_MIN_COSINE:
            raise UserError(
                f"ONNX export does not reproduce the torch encoder (min cosine {fp32:.6f} < "
                f"{FP32_MIN_COSINE}); please report this model"
            )
        atomic_write_text(tmp / "onnx" / META_FILE, json.dumps(meta, indent=2) + "\n")
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _export_graph(encoder: Any, path: Path, opset: int) -> list[str]:
    feats = encoder.tokenize(["a short one", "a somewhat longer sentence, for the dynamic axes"])
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in feats]
    model = encoder.model
    saved_attn = getattr(model.config, "_attn_implementation", None)
    _set_attention(model, "eager")  # ORT recognises and fuses eager attention, not SDPA's graph
    graph = _Graph(encoder, names)
    axes = {k: {0: "batch", 1: "sequence"} for k in names}
    axes |= {"last_hidden_state": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"}}
    try:
        with torch.no_grad(), _quiet_export():
            torch.onnx.export(
                graph,
                tuple(feats[k] for k in names),
                str(path),
                input_names=names,
                output_names=["last_hidden_state", "sentence_embedding"],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        graph.hook.remove()
        if saved_attn is not None:
            _set_attention(model, saved_attn)
    return names


def _set_attention(model: Any, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:  # transformers < 4.48
        model.config._attn_implementation = impl


class _quiet_export:
    """Silence the exporter's TracerWarnings (shape-dependent Python branches it records)."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)


def quantize_int8(src: Path, dst: Path, target: str) -> None:
    """ONNX Runtime dynamic int8 quantization with sentence-transformers' preset for ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weights, reduce_range = INT8_TARGETS[target]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs per-tensor notes on the root logger
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8 if weights == "qint8" else QuantType.QUInt8,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    finally:
        root.setLevel(level)


def _parity(encoder: Any, folder: Path, file_name: str) -> dict[str, Any]:
    """Min cosine between the ONNX file's embeddings and the torch encoder's on PROBES."""
    want = encoder.encode(PROBES, batch_size=4)
    onnx_enc = OnnxEncoder.from_pretrained(folder, file_name=file_name)
    got = onnx_enc.encode(PROBES, batch_size=4)
    cos = (want * got).sum(1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    return {
        "precision": "fp32" if file_name == "model.onnx" else "int8",
        "min_cosine_vs_torch": round(float(cos.min()), 6),
        "bytes": (folder / "onnx" / file_name).stat().st_size,
    }
