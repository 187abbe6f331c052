"""Cross-process gathering and reduction (below objectives/ and train/, which both use it).

Gathering of embeddings for in-batch negatives:

Every process embeds its own slice of the global batch; the objective gathers the embeddings of
all slices so each row sees every other row of the global batch as a negative.

Gradient bookkeeping (why the objectives return the mean over *local* rows):

* ``all_gather_with_grad`` is ``torch.distributed.nn.functional.all_gather``: its backward sums the
  gradients that every process computed for a slice and hands the sum to the slice's owner
  (reduce-scatter, emulated with all-to-all on gloo).
* Process ``p`` returns ``L_p`` = mean over its ``b`` local rows. The owner of slice ``q`` thus
  receives ``d(sum_p L_p)/d z_q`` and ``sum_p L_p = W * L`` where ``L`` is the one-process loss
  over all ``W * b`` rows.
* DDP (or accelerate) averages parameter gradients over the ``W`` processes, dividing by ``W``:
  the result is exactly ``dL/dtheta``, the gradient of one process holding the whole batch, and
  the mean of the logged per-process losses is ``L``.

Slices must have equal sizes (the loop hands out equal per-process slices; padding would need
masking of fake rows everywhere), so the gather checks sizes and raises a clear error.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from contrasent.core.errors import UserError

_alone = 0  # depth of local_only() blocks: inside one, this process computes by itself


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Inside this block the process computes alone, as a one-process run: ``is_distributed()``
    is False, ``rank()`` 0, ``world_size()`` 1, and every gather or reduction here is the
    identity. For work one process does while the others wait (the validation loss on the main
    process): a collective there would wait for processes that never join it."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def _group() -> bool:
    return not _alone and dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """True when a process group with more than one process is running (and not local_only)."""
    return _group() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if _group() else 0


def world_size() -> int:
    return dist.get_world_size() if _group() else 1


def _gather(t: Tensor) -> list[Tensor]:
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def _check_equal_rows(t: Tensor) -> None:
    sizes = _gather(torch.tensor([t.shape[0]], device=t.device, dtype=torch.long))
    sizes = [int(s.item()) for s in sizes]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"all_gather needs equal per-process batch slices, got rows {sizes} "
            "(drop the last incomplete batch or give every process the same slice size)"
        )


def all_gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every process in rank order; gradients flow back to the owners.

    Identity when not distributed (or world size 1).
    """
    if not is_distributed():
        return t
    _check_equal_rows(t)
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch >= 2.x marks it deprecated in favour of the private _functional_collectives;
        # it remains the public autograd-aware gather (backward = reduce-scatter of the sums)
        warnings.filterwarnings(
            "ignore", message=".*all_gather is deprecated", category=FutureWarning
        )
        return torch.cat(all_gather(t.contiguous()), dim=0)


def all_gather_no_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` (e.g. integer text ids) from every process in rank order, no gradient."""
    if not is_distributed():
        return t
    _check_equal_rows(t)
    return torch.cat(_gather(t.detach()), dim=0)


def row_offset(local_rows: int) -> int:
    """Index of this process's first row in the gathered batch (equal slices)."""
    return rank() * local_rows


def all_reduce_sum(t: Tensor) -> Tensor:
    """The sum of ``t`` over processes (no gradient), e.g. a count of masked tokens; ``t`` itself
    when not distributed."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def average_gradients(parameters, bucket_bytes: int = 25 * 2**20) -> None:
    """Average ``.grad`` over processes in flat buckets, as DDP's reducer would.

    The gradient cache runs several forward/backward passes per step (embedding views in
    mini-batches, per-token losses) whose parameters differ from pass to pass, so it does not
    leave the reduction to DDP's hooks, which fire for the parameters of one forward only: it
    runs every pass under ``no_sync`` and calls this once at the synchronisation point. A
    parameter without a gradient anywhere keeps none (as on one process: the optimizer skips
    it); one with a gradient on some processes only is averaged with zeros for the others."""
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    has = has.to(params[0].device)
    dist.all_reduce(has)
    params = [p for p, n in zip(params, has.tolist(), strict=True) if n > 0]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    world = float(world_size())
    bucket: list[Tensor] = []
    size = 0
    for p in [*params, None]:
        if p is not None:
            bucket.append(p.grad)
            size += p.grad.numel() * p.grad.element_size()
        if bucket and (p is None or size >= bucket_bytes):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= world
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                g.copy_(part.view_as(g))
            bucket, size = [], 0


# ----------------------------------------------------------------------------- one fails, all end
FAILED_KEY = "contrasent/failed"  # the first failing process's message, in the group's store
_FAILURES = "contrasent/failures"  # how many processes failed (the first one writes the message)
_SEEN = "contrasent/failure_seen"  # how many others read it (the failing one waits for them)


class PeerFailed(UserError):
    """Another process of the run failed first; the message is its own (one line, as a user's
    mistake is: the first process's traceback, if any, is in that process's output)."""


class OneFailsAll:
    """A failure on one process ends every process of the run within seconds, with the failing
    process's message (never a hang until the group's 30-minute timeout, never an abort).

    The failing process writes ``rank R: <error>`` into the process group's store before it
    raises, and waits (at most ``grace_s``) until the others have read it; a watcher thread on
    every process polls the store every ``poll_s`` seconds and, on finding another process's
    message, prints it and ends its own process (exit status 1): a process blocked inside a
    collective cannot be interrupted any other way. A process whose own error comes after
    another's (the collective it waited in broke) raises :class:`PeerFailed` with the first
    message instead. The process group may start inside the block: the watcher waits for it.
    """

    def __init__(
        self,
        command: str = "contrasent",
        together: tuple[type[BaseException], ...] = (),
        poll_s: float = 0.5,
        grace_s: float = 5.0,
    ) -> None:
        import threading

        self.command, self.poll_s, self.grace_s = command, poll_s, grace_s
        # errors every process raises at the same point by design (a stop signal, a diverged
        # loss agreed by a reduction): each process handles its own, nobody is ended
        self.together = (KeyboardInterrupt, SystemExit, *together)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="contrasent-peers", daemon=True)

    def __enter__(self) -> OneFailsAll:
        self._thread.start()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._stop.set()
        self._thread.join()
        if exc is None or isinstance(exc, self.together) or not is_distributed():
            return
        store = _store()
        if store is None:
            return
        try:
            if store.add(_FAILURES, 1) == 1:
                store.set(FAILED_KEY, f"rank {rank()}: {type(exc).__name__}: {exc}")
                self._wait_seen(store)
                return
            first = store.get(FAILED_KEY).decode()
        except Exception:  # the store went with a failed peer: keep this process's own error
            return
        if isinstance(exc, UserError):  # the same mistake seen by every process: its own line
            return
        raise PeerFailed(f"{first} (rank {rank()} stops too)") from exc

    def _wait_seen(self, store) -> None:
        import time

        end = time.monotonic() + self.grace_s
        # every other process read the message, or failed itself
        while time.monotonic() < end and (
            store.add(_SEEN, 0) + store.add(_FAILURES, 0) < world_size()
        ):
            time.sleep(0.05)

    def _watch(self) -> None:
        import os
        import sys

        while not self._stop.wait(self.poll_s):
            if not is_distributed():
                continue
            store = _store()
            try:
                if store is None or not store.check([FAILED_KEY]):
                    continue
                message = store.get(FAILED_KEY).decode()
                if message.startswith(f"rank {rank()}:"):
                    continue
                store.add(_SEEN, 1)
            except Exception:  # the store is gone (its process ended): nothing to learn
                return
            print(f"{self.command}: error: {message} (rank {rank()} stops too)", file=sys.stderr,
                  flush=True)  # fmt: skip
            os._exit(1)


def end_process_group(ok: bool = True) -> None:
    """Tear the process group down while the interpreter is fully alive (then collect what
    still refers to it): gloo threads left running into interpreter shutdown may release a
    tensor that needs the GIL there, and the process dies with "terminate called without an
    active exception". ``ok``: every process got here (meet at a barrier first, so nobody
    closes its connections while another still receives on them)."""
    import gc

    if not (dist.is_available() and dist.is_initialized()):
        return
    if ok:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()


def _store():
    """The default process group's key-value store (None when there is none)."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:
        return None
