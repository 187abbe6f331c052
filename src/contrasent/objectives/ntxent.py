"""NT-Xent over two views (SimCLR; ConSERT's contrastive loss, Yan et al. 2021, eq. 1).

For ``N`` sentences and two views the batch has ``2N`` representations. Each one is classified
against the other ``2N - 1``: its own other view is the positive, the ``2(N - 1)`` views of the
other sentences are the negatives (itself is excluded). Similarities are cosines divided by the
temperature (0.1 in the paper), and the loss is the mean over all ``2N`` rows.

Reference (``AdvCLSoftmaxLoss._contrastive_loss_forward``): the same rows and columns, computed
as two cross-entropies (view 1 rows, view 2 rows), each a mean over ``N`` rows, then *summed*:
its value is ``2 x`` this mean. Recipes reproducing the reference's loss scale use a weight of
``2 * cl_rate`` (see ``notes/consert.md``).

Cross-process use: pass the local rows as ``z1``/``z2`` and the gathered views of every process
(with gradient, rank order) as ``pool1``/``pool2``, with ``offset`` = the global index of the
first local row. Each process then returns the mean over its ``2b`` local rows; the mean over
processes is the one-process loss over all ``2N`` rows, and with gathering that passes gradients
back to the owners and DDP's averaging, the gradients are the one-process gradients too (the
argument of :mod:`contrasent.train.distributed`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent_logits(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.1,
    *,
    pool1: Tensor | None = None,
    pool2: Tensor | None = None,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Logits [2b, 2N] and labels [2b] of the local rows ``[z1; z2]`` against ``[pool1; pool2]``.

    Column ``g`` is view 1 of global sentence ``g``, column ``N + g`` its view 2. A row's own
    column is ``-inf`` (removed from the softmax); its label is its sentence's other view.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    pool1 = z1 if pool1 is None else pool1
    pool2 = z2 if pool2 is None else pool2
    b, n = z1.shape[0], pool1.shape[0]
    if z2.shape != z1.shape or pool2.shape != pool1.shape or pool1.shape[1:] != z1.shape[1:]:
        raise ValueError(
            f"view shapes differ: z1 {tuple(z1.shape)}, z2 {tuple(z2.shape)}, "
            f"pool1 {tuple(pool1.shape)}, pool2 {tuple(pool2.shape)}"
        )
    if not 0 <= offset <= n - b:
        raise ValueError(f"offset {offset} with {b} local rows does not fit a pool of {n}")
    queries = F.normalize(torch.cat([z1, z2]), dim=-1)
    keys = F.normalize(torch.cat([pool1, pool2]), dim=-1)
    logits = queries @ keys.T / temperature
    g = offset + torch.arange(b, device=z1.device)
    own = torch.cat([g, n + g])
    labels = torch.cat([n + g, g])
    rows = torch.arange(2 * b, device=z1.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, own] = True
    return logits.masked_fill(self_mask, float("-inf")), labels


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.1,
    *,
    pool1: Tensor | None = None,
    pool2: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """Mean NT-Xent over the ``2b`` local rows (all ``2N`` rows on one process)."""
    logits, labels = nt_xent_logits(z1, z2, temperature, pool1=pool1, pool2=pool2, offset=offset)
    return F.cross_entropy(logits, labels)
