"""ConSERT's embedding-level views as pure functions (Yan et al., 2021, section 3.2).

Every function takes tensors, the attention mask, a rate and an optional ``torch.Generator``
and returns new tensors; nothing is changed in place. They act where the reference
(yym6472/ConSERT, ``transformers/modeling_bert.py``) acts: position ids *before* the embeddings
module (token shuffle), the embeddings module's output *after* its LayerNorm and dropout
(cutoff, dropout, adversarial noise).

Conventions shared by all functions:

* ``attention_mask`` [B, T] (1 = real token). "Real tokens" include [CLS] and [SEP] (or <s>,
  </s>): the reference counts ``attention_mask.sum()`` tokens and draws over all of them, so the
  special tokens are shuffled and cut like any other token. Padding is never touched.
* Counts are exact per row, as in the reference: token cutoff zeroes ``floor(n * rate)`` of the
  row's ``n`` real tokens, feature cutoff ``floor(H * rate)`` columns, dropout
  ``floor(n * H * rate)`` elements, each a uniform subset without replacement. Dropout is *not*
  rescaled by ``1 / (1 - rate)`` (the reference uses ``index_fill(..., 0.0)`` only).
* Draws are vectorised: one ``torch.rand`` over the padded batch, then the ``k`` smallest
  scores of each row (one ``topk``; the shuffle: one ``argsort``). ``generator=None`` draws from torch's global generator
  on the tensors' device, which is what training uses: the gradient cache records and replays
  that generator per mini-batch, as it does for dropout. A seeded generator makes a function
  deterministic (the tests).
"""

from __future__ import annotations

import torch
from torch import Tensor


# ------------------------------------------------------------------ random draws
def _real(attention_mask: Tensor) -> Tensor:
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [B, T], got {tuple(attention_mask.shape)}")
    return attention_mask.bool()


def _rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None):
    """Uniform [0, 1) draws on ``device`` (from ``generator``'s device, moved if it differs)."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _smallest(scores: Tensor, k: Tensor) -> Tensor:
    """Bool mask of the ``k[i]`` smallest scores of each row of [B, M] (exactly ``k[i]``, ties
    broken arbitrarily). One ``topk`` of the largest ``k`` (a partial sort: 4x cheaper than a
    full argsort for the dropout view's ``T * H`` scores a row)."""
    out = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    kmax = int(k.max()) if k.numel() else 0
    if kmax == 0:
        return out
    idx = scores.topk(kmax, dim=1, largest=False, sorted=True).indices
    take = torch.arange(kmax, device=scores.device)[None, :] < k[:, None]
    return out.scatter_(1, idx, take)


def _floor_count(n: Tensor, rate: float) -> Tensor:
    """``int(n * rate)`` as the reference computes it (a float64 product, truncated)."""
    return torch.floor(n.to(torch.float64) * rate).long()


def check_rate(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")


def _token_scores(real: Tensor, inner: int, generator: torch.Generator | None) -> Tensor:
    """Uniform scores [B, T, inner] at real tokens, +inf at padding (never among the smallest)."""
    draws = _rand((*real.shape, inner), real.device, generator)
    return draws.masked_fill(~real[..., None], float("inf"))


# ------------------------------------------------------------------ views
def shuffle_positions(
    position_ids: Tensor, attention_mask: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Token shuffle: the position ids of each row's real tokens, uniformly permuted.

    Token ids stay in place; only which position embedding each token receives changes, as the
    reference's ``_replace_position_ids`` does (it permutes the first ``attention_mask.sum()``
    ids of each row: with right padding, exactly the real tokens, [CLS] and [SEP] included).
    Here the real tokens are wherever the mask is 1 (left padding works too), and padding keeps
    its ids. ``position_ids`` are taken as given, so RoBERTa-style ids starting at
    ``padding_idx + 1`` (padding at ``padding_idx``) are permuted correctly; the reference
    substitutes ``arange(T)`` when none are passed, which is wrong for RoBERTa.
    """
    real = _real(attention_mask)
    if position_ids.shape != real.shape:
        position_ids = position_ids.expand(real.shape)
    scores = _token_scores(real, 1, generator)[..., 0]
    # slots: real tokens in order, then padding in order; order: real tokens shuffled, then
    # padding in order. Position j of `slots` receives the id that sat at position j of `order`.
    slots = (~real).to(torch.int8).argsort(dim=1, stable=True)
    order = scores.argsort(dim=1, stable=True)
    return position_ids.clone().scatter_(1, slots, position_ids.gather(1, order))


def token_cutoff_mask(
    attention_mask: Tensor, rate: float, generator: torch.Generator | None = None
) -> Tensor:
    """Bool [B, T]: the ``floor(n * rate)`` real tokens of each row that token cutoff zeroes."""
    check_rate(rate)
    real = _real(attention_mask)
    scores = _token_scores(real, 1, generator)[..., 0]
    return _smallest(scores, _floor_count(real.sum(1), rate))


def token_cutoff(
    embeddings: Tensor,
    attention_mask: Tensor,
    rate: float = 0.15,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Token cutoff: whole token rows of the [B, T, H] embedding output set to zero."""
    cut = token_cutoff_mask(attention_mask, rate, generator)
    return embeddings.masked_fill(cut[..., None], 0.0)


def feature_cutoff_mask(
    attention_mask: Tensor, hidden: int, rate: float, generator: torch.Generator | None = None
) -> Tensor:
    """Bool [B, H]: the ``floor(H * rate)`` feature columns each row loses (drawn per row)."""
    check_rate(rate)
    real = _real(attention_mask)
    scores = _rand((real.shape[0], hidden), real.device, generator)
    k = _floor_count(torch.full((real.shape[0],), hidden, device=real.device), rate)
    return _smallest(scores, k)


def feature_cutoff(
    embeddings: Tensor,
    attention_mask: Tensor,
    rate: float = 0.2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Feature cutoff: whole feature columns of each row set to zero at its real tokens.

    The reference zeroes the columns on padding rows too; padding rows are left alone here,
    which changes no output (padding keys are masked and pooling skips padding queries).
    """
    cols = feature_cutoff_mask(attention_mask, embeddings.shape[-1], rate, generator)
    cut = cols[:, None, :] & attention_mask.bool()[..., None]
    return embeddings.masked_fill(cut, 0.0)


def dropout_mask(
    attention_mask: Tensor, hidden: int, rate: float, generator: torch.Generator | None = None
) -> Tensor:
    """Bool [B, T, H]: the ``floor(n * H * rate)`` real-token elements each row loses."""
    check_rate(rate)
    real = _real(attention_mask)
    b, t = real.shape
    scores = _token_scores(real, hidden, generator).reshape(b, t * hidden)
    k = _floor_count(real.sum(1) * hidden, rate)
    return _smallest(scores, k).reshape(b, t, hidden)


def embedding_dropout(
    embeddings: Tensor,
    attention_mask: Tensor,
    rate: float = 0.2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dropout view: individual elements zeroed, an exact count per row, no 1/(1-p) rescale."""
    cut = dropout_mask(attention_mask, embeddings.shape[-1], rate, generator)
    return embeddings.masked_fill(cut, 0.0)


def span_keep_mask(
    attention_mask: Tensor, rate: float, generator: torch.Generator | None = None
) -> Tensor:
    """Bool [B, T]: the one contiguous window of real tokens each row keeps.

    The reference's ``_sample_span`` keeps ``max(int(n * (1 - rate)), 1)`` consecutive real
    tokens, the window's start uniform over the ``n - len + 1`` choices, and drops the rest.
    """
    check_rate(rate)
    real = _real(attention_mask)
    n = real.sum(1)
    keep_len = torch.clamp(_floor_count(n, 1.0 - rate), min=1)
    u = _rand((real.shape[0],), real.device, generator)
    start = torch.minimum(torch.floor(u * (n - keep_len + 1)).long(), n - keep_len)
    ordinal = real.long().cumsum(1) - 1  # index of each real token among its row's real tokens
    inside = (ordinal >= start[:, None]) & (ordinal < (start + keep_len)[:, None])
    return inside & real


def span_cutoff(
    embeddings: Tensor,
    attention_mask: Tensor,
    rate: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Span view at the embedding level: real-token rows outside the kept window set to zero.

    The reference (ConSERT) sets the ids outside the window to 0, the padding id, but its
    attention mask was computed before the cut and is not changed: the cut tokens stay
    attended (and pooled) as padding tokens at their positions. Here they stay attended and
    pooled too, with the same mask; what differs is their input to the first layer: a zero row
    here, the embedding of the padding token there. :func:`span_keep_mask` gives the window. No
    paper setting or script uses span.
    """
    keep = span_keep_mask(attention_mask, rate, generator)
    drop = attention_mask.bool() & ~keep
    return embeddings.masked_fill(drop[..., None], 0.0)


def fgv_perturbation(grad: Tensor, epsilon: float, attention_mask: Tensor | None = None) -> Tensor:
    """Fast Gradient Value noise (Miyato et al., 2017; ConSERT's adversarial view).

    ``grad`` is the gradient of the supervised loss w.r.t. the embedding output [B, T, H]. Each
    token's gradient vector is L2-normalised over H (``grad / (||grad|| + 1e-10)``, as
    ``AdvCLSoftmaxLoss`` does: per token, not per sentence) and scaled by ``epsilon``; the
    caller adds the result to the embedding output. Padding rows get no noise (their gradient is
    zero anyway: nothing attends to them and pooling skips them). Detached: the noise is a
    constant of the second forward pass.
    """
    grad = grad.detach()
    if grad.dtype in (torch.float16, torch.bfloat16):  # the norm in half precision overflows
        grad = grad.float()
    noise = epsilon * grad / (grad.norm(p=2, dim=-1, keepdim=True) + 1e-10)
    if attention_mask is not None:
        noise = noise * attention_mask.to(noise.dtype)[..., None]
    return noise
