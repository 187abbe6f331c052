"""How one encoder forward pass runs, apart from what the model is: the pooling of token states
into sentence vectors, length buckets (rows of similar length in passes of their own,
``train.length_buckets``) and a relative position bias that follows rewritten position ids
(MPNet under ConSERT's shuffle)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from contrasent.core.errors import UserError
from contrasent.model.pooling import HIDDEN_STATE_PICKS, HIDDEN_STATE_POOLINGS, check_pooling

__all__ = [
    "BUCKET_MIN_SAVING",
    "in_length_buckets",
    "length_buckets",
    "padded_position_ids",
    "pool",
    "relative_bias_from",
    "rows_of",
]


@contextmanager
def relative_bias_from(model: Any, position_ids: Tensor) -> Iterator[None]:
    """Make a relative position bias follow the given position ids during one forward.

    MPNet adds to every attention layer a bias of the bucketed distance between positions, which
    its encoder computes from ``arange(T)`` whatever position ids the model was given: a token
    shuffle would move only the absolute position embeddings. Here the bias is computed from
    ``position_ids`` (distances only, so the ``padding_idx + 1`` offset cancels). Models
    without one are untouched.
    """
    encoder = getattr(model.base_model, "encoder", None)
    if not callable(getattr(encoder, "compute_position_bias", None)):
        yield
        return

    def bias(_hidden: Tensor, num_buckets: int = 32) -> Tensor:
        # num_buckets: the default MPNetEncoder.forward relies on (it passes only the states)
        rel = position_ids[:, None, :] - position_ids[:, :, None]  # memory - context, [B, T, T]
        bucket = encoder.relative_position_bucket(rel, num_buckets=num_buckets)
        return encoder.relative_attention_bias(bucket).permute(0, 3, 1, 2).contiguous()

    encoder.compute_position_bias = bias  # an instance attribute shadows the method
    try:
        yield
    finally:
        del encoder.compute_position_bias


#: a length bucket (one more encoder pass) must save this fraction of the one-pass token slots
BUCKET_MIN_SAVING = 0.03


def length_buckets(lengths: Sequence[int], buckets: int) -> list[tuple[list[int], int]]:
    """Rows grouped into at most ``buckets`` passes of similar length, padded slots minimised.

    Returns ``[(row indices, longest length), ...]``, longest bucket first, rows of equal length
    in row order (pure function). The split is the optimum over cut points between sorted
    lengths (dynamic programming over the distinct lengths: cost of a bucket = its rows times
    its longest); a bucket is only added when it removes at least ``BUCKET_MIN_SAVING`` of the
    one-pass slots (each pass has a fixed cost, and smaller matmuls run slower per FLOP).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if not order:
        return []
    # the cut points: between distinct lengths, coarsened to <= 64 groups (the DP is quadratic)
    step = -(-max(int(x) for x in lengths) // 64)
    key = [-(-int(lengths[i]) // step) * step for i in order]
    values = sorted(set(key), reverse=True)
    starts = [0]  # rows before each group, longest first
    for v in values:
        starts.append(starts[-1] + key.count(v))
    g = len(values)
    inf = float("inf")
    # best[k][j]: fewest slots for the first j length groups in k buckets; cut[k][j]: last start
    best = [[inf] * (g + 1) for _ in range(buckets + 1)]
    cut = [[0] * (g + 1) for _ in range(buckets + 1)]
    best[0][0] = 0
    for k in range(1, buckets + 1):
        for j in range(1, g + 1):
            for i in range(j):  # bucket = groups i..j-1, its longest is values[i]
                cost = best[k - 1][i] + (starts[j] - starts[i]) * values[i]
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    one = best[1][g]
    k = 1
    for more in range(2, min(buckets, g) + 1):
        if best[k][g] - best[more][g] >= BUCKET_MIN_SAVING * one * (more - k):
            k = more
    bounds, j = [], g
    for level in range(k, 0, -1):
        i = cut[level][j]
        bounds.append((i, j))
        j = i
    return [(order[starts[i] : starts[j]], values[i]) for i, j in reversed(bounds) if j > i]


def in_length_buckets(
    embed: Callable[[dict[str, Tensor]], Tensor],
    features: dict[str, Tensor],
    buckets: int,
    left_padding: bool = False,
    lookup: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
) -> Tensor:
    """``embed(features)`` run as up to ``buckets`` passes over rows of similar length, outputs
    [B, H] in row order (``Encoder.forward`` with ``length_buckets`` > 1).

    Rows are grouped by real length (:func:`length_buckets`); each group is padded only to its
    own longest row, so padding costs less of the compute. Every output row depends on its own
    row only (a transformer, pooling and heads are row-wise), so the result is the one-pass
    result up to float rounding of other matmul shapes; only dropout draws differ (other
    shapes: other masks, the same distribution). Runs in one pass when there is nothing to
    trim, for left padding (trimming would shift absolute positions) and for a caller's
    ``inputs_embeds``. ``lookup`` (``Encoder``: the model's word embeddings as
    ``inputs_embeds``) runs once on all rows before they are split.
    """
    mask = features.get("attention_mask")
    width = mask.shape[1] if mask is not None and mask.dim() == 2 else 0
    if not width or features.get("inputs_embeds") is not None or left_padding:
        return embed(features)
    lengths = mask.sum(dim=1)
    parts = length_buckets(lengths.tolist(), buckets)
    if len(parts) == 1 and parts[0][1] == width:
        return embed(features)
    if lookup is not None:
        # the word embeddings looked up once for all parts: the lookup's backward (a dense
        # [vocab, H] gradient, zero-filled, then added to the weight's) runs once, not per part
        features = lookup(features)
    outs = []
    for rows, longest in parts:
        index = torch.as_tensor(rows, device=mask.device)
        outs.append(embed({k: rows_of(v, index, width, longest) for k, v in features.items()}))
    order = torch.as_tensor([r for rows, _ in parts for r in rows], device=mask.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return torch.cat(outs)[inverse]


def padded_position_ids(ids: Tensor, padding_idx: int) -> Tensor:
    """RoBERTa-style position ids of ``ids [B, T]`` (pure): ``padding_idx + 1`` upward over the
    real tokens, ``padding_idx`` for pads (a pad id inside a text included), as those models
    count them from the ids (from ``inputs_embeds`` they would count every column)."""
    real = ids.ne(padding_idx).int()
    return (torch.cumsum(real, dim=1) * real).long() + padding_idx


def rows_of(value: Any, index: Tensor, width: int, longest: int) -> Any:
    """Rows ``index`` of one feature, token columns (right padding) trimmed to ``longest``."""
    if not isinstance(value, Tensor) or value.dim() == 0:
        return value
    value = value.index_select(0, index)
    if value.dim() >= 2 and value.shape[1] == width:
        value = value[:, :longest]
    return value


# -------------------------------------------------------------------- helpers: HF loading


def pool(
    pooling: str,
    last_hidden_state: Tensor,
    attention_mask: Tensor,
    hidden_states: Sequence[Tensor] | None = None,
    pooler_output: Tensor | None = None,
) -> Tensor:
    """Pool token states [B, T, H] into sentence vectors [B, H] (pure function).

    ``hidden_states`` follows HF: ``hidden_states[0]`` is the embedding-layer output and
    ``hidden_states[i]`` the output of transformer layer i. ``avg_first_last`` therefore averages
    layer 1 and the last layer, as SimCSE's models.py does; ``avg_embeddings_last`` averages the
    embedding-layer output and the last layer, the "first-last avg." baseline of the SimCSE and
    ConSERT tables (from BERT-flow).
    ``cls`` is the HF ``pooler_output`` (BERT: tanh(dense(CLS))); ``cls_before_pooler`` the raw
    first real token. Masked reductions accumulate in float32 (safe under autocast).
    """
    check_pooling(pooling)
    if pooling == "cls":
        if pooler_output is None:
            raise UserError(
                "pooling 'cls' needs a model with a pooler (BERT-style); this model has "
                "none: use 'cls_before_pooler'"
            )
        return pooler_output
    if pooling == "cls_before_pooler":
        # First real token (index 0 with right padding), as ST's Pooling("cls") picks it.
        # gather, not indexing with arange(len(...)): an ONNX trace would freeze that length
        # to the export batch's size (ORT then fails to broadcast any other batch)
        first = attention_mask.to(torch.int).argmax(dim=1)  # [B]
        index = first[:, None, None].expand(-1, 1, last_hidden_state.shape[-1])  # [B, 1, H]
        return last_hidden_state.gather(1, index).squeeze(1)
    mask = attention_mask.unsqueeze(-1)
    if pooling == "max":
        return last_hidden_state.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    if pooling in HIDDEN_STATE_POOLINGS:
        if hidden_states is None or len(hidden_states) < 2:
            raise UserError(f"pooling {pooling!r} needs the model's hidden states")
        a, b = HIDDEN_STATE_PICKS[pooling]
        tokens = (hidden_states[a] + hidden_states[b]) / 2
    else:
        tokens = last_hidden_state
    mask = mask.to(torch.float32)
    return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
