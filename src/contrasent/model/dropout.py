"""Dropout with cheaper random draws on the CPU (``train.fast_dropout``).

``nn.Dropout`` on a CPU tensor draws one Bernoulli sample per element through
``bernoulli_``, which runs the Mersenne Twister element by element: on this project's CPU
(AMD EPYC, 1 thread) 3.9 ms forward + backward for one [64, 32, 384] activation, about 10% of
a bf16 MiniLM training step, where every matmul of that step takes the rest. Here the mask
comes from torch's default generator in 64-bit words, each cut into four 16-bit lanes (one
``random_`` call per four elements), and a lane drops its element when it falls below
``k = round(p * 65536)``: the drop probability is ``k / 65536`` (for p = 0.1: 0.100006) and the
kept elements are scaled by ``65536 / (65536 - k)``, so the output's expectation is the input,
as with ``nn.Dropout`` (in bf16 the scale rounds to bf16, as torch's own does). Same distribution of masks, different draws (as length bucketing
changes them); the draws come from the same generator, so seeding, the gradient cache's RNG
replay and a resumed run's RNG state cover them exactly as before.

The attention probabilities' dropout is not a module: transformers passes its ``p`` to the
attention function, and torch's SDPA then runs its unfused math path with ``bernoulli_`` masks.
For models on transformers' attention interface (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT,
...) whose attention is ``sdpa``, :func:`use_fast_dropout` registers :func:`fast_attention` under
its own name and points the model's config at it: in CPU training it is that math path with the
mask above (softmax(q k^T * scaling + mask), dropped, times v); everywhere else (evaluation, a
GPU, p = 0, grouped keys, a position bias or softcap, a cache's prefill) it calls transformers'
``sdpa`` function unchanged. On this project's CPU a bf16 MiniLM forward + backward of 64 x 32
tokens took 0.58-0.60 s with torch's dropout, 0.54-0.59 s with only the modules' dropout fast and
0.45-0.46 s with the attention's too (1 thread, CPU clock). The name is not
saved (``config.json`` never records the attention implementation). Models with their own
attention code (MPNet) apply dropout through an ``nn.Dropout`` module: covered above.

CUDA tensors, evaluation mode and ``p`` of 0 or 1 take ``nn.Dropout``'s own path (a GPU's
fused dropout is already cheap).

Inference in bf16 (the encoder's held bf16 copy, :func:`use_fast_attention`): on CPUs with
AVX512-BF16 but no AMX, :func:`fast_attention` runs the attention itself in fp32 (q, k, v cast
up, the output cast back): there torch's bf16 SDPA kernel was slower than its fp32 one on
sentence-length inputs (MiniLM on STS-B sentences, 1 thread: encode 2-11% faster in four
paired runs, every embedding's cosine to the bf16-attention one >= 0.9999). With AMX (not
measured here), or without fast bf16, the attention stays as given.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "ATTENTION",
    "FastDropout",
    "drop_mask",
    "fast_attention",
    "use_fast_attention",
    "use_fast_dropout",
]

_LANES = 65536  # values of one 16-bit lane
ATTENTION = "contrasent_sdpa"  # the attention implementation's registered name


def drop_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """The dropout multiplier for ``shape``: 0 where an element is dropped, ``1/(1 - p')``
    elsewhere, with ``p' = round(p * 65536) / 65536``; four elements per 64-bit draw of the
    default generator."""
    n = shape.numel()
    k = round(p * _LANES)
    # the whole int64 range: every bit of a word is uniform (random_() alone keeps the sign 0)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    keep = lanes >= k - _LANES // 2
    return keep.to(dtype).mul_(_LANES / (_LANES - k))


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training path draws its mask with :func:`drop_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0 < self.p < 1 or self.inplace:
            return super().forward(x)
        # autograd saves only the mask for backward (x needs no saving), as nn.Dropout does
        return x * drop_mask(x.shape, self.p, x.dtype)


def fast_attention(
    module: nn.Module,
    query: torch.Tensor,  # [B, heads, Lq, d]
    key: torch.Tensor,  # [B, heads, Lk, d]
    value: torch.Tensor,  # [B, heads, Lk, d]
    attention_mask: torch.Tensor | None,  # [B, 1, Lq, Lk]: bool (True: attend) or additive
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention function, with the probabilities' dropout drawn by
    :func:`drop_mask` in CPU training; returns ([B, Lq, heads, d], None) as ``sdpa`` does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    lq, lk = query.shape[2], key.shape[2]
    causal = attention_mask is None and is_causal and lq > 1  # as sdpa's own rule
    plain = (
        not module.training
        or not 0 < dropout < 1
        or query.device.type != "cpu"
        or getattr(module, "num_key_value_groups", 1) > 1
        or any(kwargs.get(k) is not None for k in ("position_bias", "softcap"))
        or (causal and lk != lq)  # a cache's prefill: sdpa cuts the keys first
    )
    if plain and _bf16_in_fp32(module, query):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        up = (t.float() for t in (query, key, value))
        out, _ = sdpa_attention_forward(
            module, *up, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return out.to(query.dtype), None
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, heads, Lq, Lk]
    if causal:
        attention_mask = torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, float("-inf"))
        else:
            weights = weights + attention_mask
    probs = torch.softmax(weights, dim=-1)
    probs = probs * drop_mask(probs.shape, dropout, probs.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


@functools.cache
def fp32_attention_pays() -> bool:
    """bf16 attention is computed in fp32 here: a CPU with AVX512-BF16 and no AMX (measured on
    one: torch's bf16 SDPA slower than fp32 on short sequences)."""
    from contrasent.core.hardware import cpu_bf16_level

    return cpu_bf16_level() == "avx512_bf16"


def _bf16_in_fp32(module: nn.Module, query: torch.Tensor) -> bool:
    return (
        query.dtype == torch.bfloat16
        and query.device.type == "cpu"
        and not module.training
        and not torch.is_autocast_enabled("cpu")  # autocast would cast it back to bf16
        and fp32_attention_pays()
    )


def use_fast_attention(module: nn.Module) -> int:
    """Point ``sdpa`` attention in ``module`` at :func:`fast_attention` (no dropout change): the
    encoder's held bf16 copy, for the fp32 attention above; returns how many configs changed."""
    return _switch_attention(module, True)


def _registered() -> bool:
    """Register :func:`fast_attention` (and sdpa's mask builder) under ``ATTENTION``; False
    where this transformers has no attention interface (older than 4.53)."""
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        from transformers.modeling_utils import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(ATTENTION, fast_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return True


def _switch_attention(module: nn.Module, on: bool) -> int:
    """Point every transformers config in ``module`` that uses ``sdpa`` at ``ATTENTION``
    (``on=False``: back); returns how many configs changed."""
    old, new = ("sdpa", ATTENTION) if on else (ATTENTION, "sdpa")
    if on and not _registered():
        return 0
    configs = {id(c): c for m in _modules(module) if (c := getattr(m, "config", None)) is not None}
    switched = 0
    for config in configs.values():
        if getattr(config, "_attn_implementation", None) == old:
            config._attn_implementation = new
            switched += 1
    return switched


def use_fast_dropout(module: nn.Module, on: bool = True) -> int:
    """Replace every ``nn.Dropout`` (exactly that class, p > 0) inside ``module`` by a
    :class:`FastDropout` of the same ``p`` and switch ``sdpa`` attention to
    :func:`fast_attention`, in place (``on=False``: the reverse, for resuming a run that drew
    torch's masks); returns how many modules and configs changed. Dropout has no parameters or
    buffers: state dicts, saving and export are unchanged. Modules a module runs but does not
    register (its ``held_modules()``: TSDAE's tied decoder) are switched with it."""
    old, new = (nn.Dropout, FastDropout) if on else (FastDropout, nn.Dropout)
    swapped = 0
    for parent in list(_modules(module)):
        for name, child in list(parent.named_children()):
            if type(child) is old and child.p > 0:
                # the mode too: a model held outside the module tree (TSDAE's tied decoder) is
                # only put in train/eval mode as a whole when its own flag differs
                setattr(parent, name, new(child.p).train(child.training))
                swapped += 1
    return swapped + _switch_attention(module, on)


def _modules(module: nn.Module) -> Iterator[nn.Module]:
    """``module.modules()`` and, for each module with a ``held_modules()`` method, the modules
    of what it returns (models it runs without registering them, e.g. so that a state dict
    does not hold another module's parameters twice)."""
    for m in module.modules():
        yield m
        held = getattr(m, "held_modules", None)
        if callable(held):
            for h in held():
                yield from _modules(h)
