"""Loading a model for the Encoder: where it comes from (a folder or a hub id), the Hugging Face
model and tokenizer, the device, the inference precision and the default sequence length."""

from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from contrasent.core.errors import UserError
from contrasent.model.dropout import use_fast_attention

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_CHOICES = (*PRECISIONS, "auto")


def model_source(name_or_path: str | os.PathLike, path: Path) -> str:
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model directory {path} has no config.json (nor modules.json): not a "
                "Hugging Face or sentence-transformers model directory"
            )
        return str(path)
    name = os.fspath(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name:
        raise UserError(f"model path {name} does not exist")
    return name


def load_hf(source: str) -> tuple[Any, Any, bool]:
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model, info = AutoModel.from_pretrained(
            source, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot load model {source!r}: {first} (give a local model directory or a "
            "Hugging Face hub id; offline runs need a local directory)"
        ) from e
    random_pooler = any("pooler" in k for k in info.get("missing_keys", ()))
    return model, tokenizer, random_pooler


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_precision(device: torch.device, precision: str) -> str:
    """``fp32``/``fp16``/``bf16`` for an inference ``precision`` on ``device``, checked.

    ``auto``: on CUDA bf16 where the GPU has it, else fp16; on a CPU bf16 only where it has fast
    bf16 matmuls (AMX or AVX512-BF16, `contrasent.core.hardware`), else fp32 (emulated bf16 is
    slower than fp32). fp16 runs on CUDA only (CPU half-precision matmuls are slow).
    """
    from contrasent.core.hardware import auto_half_precision

    if precision not in PRECISION_CHOICES:
        raise UserError(f"unknown precision {precision!r}; valid: {', '.join(PRECISION_CHOICES)}")
    cuda = device.type == "cuda"
    if precision == "auto":
        return auto_half_precision(cuda) or "fp32"
    if precision == "fp16" and not cuda:
        raise UserError(
            f"precision 'fp16' needs a CUDA device; on {device.type} use 'bf16' (fast where the "
            "CPU has AMX or AVX512-BF16), 'auto' or 'fp32'"
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("precision 'bf16' is not supported on this GPU; use 'fp16' or 'fp32'")
    return precision


def autocast(device: torch.device, precision: str) -> Any:
    """The autocast context of a resolved precision: fp16 on CUDA; bf16 and fp32 need none
    (bf16 weights are held in bf16, see ``Encoder.encode``)."""
    if precision != "fp16":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.float16)


def unused_inputs(model: Any) -> frozenset[str]:
    """Tokenizer outputs the model's forward does not name (its ``**kwargs`` would swallow them
    silently, or older transformers raise)."""
    import inspect

    named = inspect.signature(model.forward).parameters
    return frozenset(k for k in ("token_type_ids",) if k not in named)


def position_limit(model: Any) -> int | None:
    limit = getattr(model.config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def default_max_len(model: Any, tokenizer: Any) -> int:
    """min(tokenizer.model_max_length, max_position_embeddings), as sentence-transformers caps it."""
    sane = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    found = [x for x in (sane, position_limit(model)) if x]
    return min(found) if found else 512


def held_copy(holder: dict[str, Any], model: torch.nn.Module, dtype: torch.dtype) -> Any:
    """A copy of ``model`` with its weights in ``dtype`` (eval mode), made once and kept in
    ``holder["_held"]`` until a weight changes (training steps bump the parameters' versions;
    loading new weights moves their data) or the device does.

    Held rather than autocast: autocast re-casts every weight on every forward (the encoder's
    bf16 inference). The copy's ``sdpa`` attention goes through ``model.dropout.fast_attention``
    (bf16 attention computed in fp32 where that pays)."""
    params = list(model.parameters())
    key = (dtype, params[0].device, tuple((p.data_ptr(), p._version) for p in params))
    held = holder.get("_held")
    if held is None or held[0] != key:
        holder["_held"] = None  # free the old copy before making the new one
        held = (key, copy.deepcopy(model).to(dtype).eval())
        use_fast_attention(held[1])
        holder["_held"] = held
    return held[1]
