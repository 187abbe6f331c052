"""Keyed randomness: generators determined by a seed and a key alone, never carried state.

Randomness that belongs to a piece of data (a row's MLM mask, a sentence's deletion noise, an
epoch's shuffle) is drawn from a generator built from ``(seed, *key)``: the same draw whatever
the number of processes, the gradient-cache chunking, or where a run was resumed.
"""

from __future__ import annotations

import numpy as np
import torch


def keyed_rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator determined by (seed, keys) alone."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, *keys]))


def keyed_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` determined by (seed, keys) alone."""
    state = np.random.SeedSequence([seed % 2**63, *keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
