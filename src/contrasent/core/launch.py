"""How this process was launched: the RANK / WORLD_SIZE / LOCAL_RANK that torchrun and
accelerate launch set (0, 1, 0 for a plain ``python`` run), read in this one place.

Torch-free, and usable before any process group exists (``embed`` picks its shard, the loop
checks the launcher, stages decide who writes); once a group runs,
:func:`contrasent.core.distributed.rank` asks the group itself.
"""

from __future__ import annotations

import os


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def under_launcher() -> bool:
    """True when a launcher set WORLD_SIZE (even to 1)."""
    return "WORLD_SIZE" in os.environ
