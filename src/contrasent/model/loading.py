"""Loading a model for the Encoder: where it comes from (a folder or a hub id), the Hugging Face
model and tokenizer, the device, the inference precision and the default sequence length."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from contrasent.core.errors import UserError

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


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


def autocast(device: torch.device, precision: str) -> Any:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    if device.type != "cuda":
        raise UserError(
            f"precision {precision!r} needs a CUDA device (autocast runs on GPU "
            f"only here); on {device.type} use precision 'fp32'"
        )
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError("precision 'bf16' is not supported on this GPU; use 'fp16' or 'fp32'")
    return torch.autocast("cuda", dtype=dtype)


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
