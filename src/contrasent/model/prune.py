"""A smaller student from a teacher: keep a subset of its transformer layers (``model.keep_layers:
[0, 2, 4]``), as sentence-transformers' model-distillation example builds its student."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from contrasent.core.errors import UserError

_COUNT_KEYS = ("num_hidden_layers", "n_layers", "num_layers")


def layer_list(model: Any) -> tuple[nn.ModuleList, str]:
    """The model's stack of transformer layers and the config key that counts them."""
    key = next((k for k in _COUNT_KEYS if isinstance(getattr(model.config, k, None), int)), None)
    count = getattr(model.config, key, None) if key else None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and name.endswith("layer"):
            return module, key
    for _name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module, key
    raise UserError(f"model.keep_layers: cannot find the layer stack of {type(model).__name__}")


def keep_layers(model: Any, layers: Sequence[int]) -> Any:
    """Keep ``layers`` (indices into the model's layer stack, in order) and drop the others, in
    place; the config's layer count follows, so the saved model loads as the smaller one."""
    stack, key = layer_list(model)
    n = len(stack)
    bad = [i for i in layers if not 0 <= i < n]
    if not layers or bad or len(set(layers)) != len(layers) or list(layers) != sorted(layers):
        raise UserError(
            f"model.keep_layers {list(layers)}: give distinct increasing layer indices in "
            f"[0, {n - 1}] (the model has {n} layers)",
            "model.keep_layers",
        )
    kept = [stack[i] for i in layers]
    while len(stack):
        del stack[len(stack) - 1]
    stack.extend(kept)
    setattr(model.config, key, len(kept))
    for i, layer in enumerate(kept):  # attention implementations that cache by layer index
        attn = getattr(getattr(layer, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = i
    return model
