"""Matryoshka dimensions: the first ``dim`` components of an embedding, re-normalised.

A model trained with ``objective.matryoshka`` records its trained dimensions
(``Encoder.matryoshka_dims``, saved in ``contrasent_config.json``); ``--dim N`` of ``eval``,
``embed``, ``index build``, ``search`` and ``export`` truncates to ``N`` and L2-normalises again,
which is what sentence-transformers' ``SentenceTransformer(dir, truncate_dim=N)`` followed by
normalisation gives (its cosine similarity normalises; its ``MatryoshkaLoss`` trains exactly this).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from contrasent.core.errors import UserError

log = logging.getLogger(__name__)


def truncate(embeddings: Any, dim: int | None) -> Any:
    """``embeddings[..., :dim]`` L2-normalised (numpy or torch; ``dim`` None: unchanged).

    Half-precision torch tensors are normalised in float32 and cast back (as
    sentence-transformers' ``shrink``); a zero row stays zero.
    """
    if dim is None:
        return embeddings
    if isinstance(embeddings, np.ndarray):
        cut = embeddings[..., :dim].astype(np.float32, copy=False)
        norm = np.linalg.norm(cut, axis=-1, keepdims=True)
        return cut / np.maximum(norm, 1e-12)
    import torch.nn.functional as F

    cut = embeddings[..., :dim]
    half = cut.dtype in (_torch().float16, _torch().bfloat16)
    out = F.normalize(cut.float() if half else cut, p=2, dim=-1)
    return out.to(cut.dtype) if half else out


def _torch() -> Any:
    import torch

    return torch


def check_dim(
    dim: int | None, full: int, trained: Sequence[int] | None, option: str = "--dim"
) -> int | None:
    """``dim`` checked against the model: larger than its ``full`` dimension is a UserError;
    a dimension it was not trained for (``trained``: its Matryoshka dims, None: trained at
    ``full`` only) a warning naming the trained ones. ``dim == full`` means no truncation."""
    if dim is None:
        return None
    if dim < 1:
        raise UserError(f"{option} {dim}: must be a positive number of dimensions")
    if dim > full:
        raise UserError(f"{option} {dim}: larger than the model's embedding dimension {full}")
    known = sorted(set(trained or (full,)), reverse=True)
    if dim not in known:
        how = (
            f"with Matryoshka dims {', '.join(map(str, known))}"
            if trained
            else f"at its full dimension {full} only (it records no Matryoshka dims)"
        )
        log.warning(
            "%s %d: the model was trained %s; other sizes may embed poorly", option, dim, how
        )
    return dim


def parse_dims(text: str, option: str = "--dims") -> list[int]:
    """``"64,128"`` -> ``[64, 128]`` (positive, unique, in the order given)."""
    dims: list[int] = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise UserError(f"{option}: {item!r} is not a positive number of dimensions")
        if int(item) in dims:
            raise UserError(f"{option}: {item} is given twice")
        dims.append(int(item))
    if not dims:
        raise UserError(f"{option}: no dimension given (e.g. {option} 64,128,256)")
    return dims


def apply_dim(encoder: Any, dim: int | None, option: str = "--dim") -> Any:
    """Make ``encoder`` embed at ``dim``: an identity Dense head keeping the first ``dim``
    columns, then L2 normalisation (checked by :func:`check_dim`; ``dim`` None or the full
    dimension: unchanged). The head is an ordinary sentence-transformers ``Dense`` (bias-free,
    Identity activation), so ``encode``, ``save`` and ``export`` all carry the truncation and
    ``SentenceTransformer(saved)`` embeds exactly like ``truncate_dim=dim`` plus normalisation."""
    from torch import nn

    from contrasent.model.st_layout import DenseHead

    if dim is None:
        return encoder
    if not hasattr(encoder, "dense"):
        raise UserError(f"{option} needs the torch backend (export the model with {option})")
    full = encoder.hidden_size
    check_dim(dim, full, encoder.matryoshka_dims, option)
    if dim == full:
        return encoder
    linear = nn.Linear(full, dim, bias=False)
    with _torch().no_grad():
        linear.weight.copy_(_torch().eye(dim, full))
    encoder.dense.append(DenseHead(linear, nn.Identity()).to(encoder.device))
    encoder.normalize = True
    if encoder.matryoshka_dims:
        encoder.matryoshka_dims = [d for d in encoder.matryoshka_dims if d <= dim]
    return encoder


def memo_encode(encode: Any) -> Any:
    """``encode`` remembering each call's result by its texts: one evaluation at several dims
    encodes every text list once and truncates the cached full-width embeddings."""
    cache: dict[tuple[str, ...], Any] = {}

    def cached(texts: Any) -> Any:
        key = tuple(texts)
        if key not in cache:
            cache[key] = encode(list(texts))
        return cache[key]

    return cached


def at_dim(encode: Any, dim: int) -> Any:
    """``encode`` followed by :func:`truncate` to ``dim``."""
    return lambda texts: truncate(np.asarray(encode(texts), dtype=np.float32), dim)
