"""Where a training step's time goes, per method: our loop, the same runs as ``bench/train.py``.

Runs ``contrasent.train.loop.train`` unchanged for ``--steps`` steps per method with timers
wrapped around the functions the loop calls (in this process only), and prints the median per
step of each section, exclusive of the others:

* ``data``: the data stream's ``next()`` (reading, shuffling, batching);
* ``tokenize``: ``Encoder.tokenize`` (texts -> padded tensors);
* ``forward``: the objective's step minus tokenization and loss: the encoder passes (and heads:
  SimCSE's MLP, TSDAE's decoder, the MLM head);
* ``loss``: the objective's ``loss()`` (similarities, cross-entropy) and the loss record;
* ``backward``: ``torch.autograd.backward``;
* ``clip``: ``torch.nn.utils.clip_grad_norm_``;
* ``optimizer``: ``AdamW.step``;
* ``other``: the rest of the step: zero_grad, scheduler, logging, the loop itself.

Also prints the padding fraction, GFLOP/s and % of the matmul peak of the timed steps
(``throughput.py``) so a profile and the benchmark table read side by side. The clock is process
CPU time (steady on a shared CPU; on a GPU use ``--clock wall``: CUDA runs asynchronously, so
sections are then only meaningful with ``CUDA_LAUNCH_BLOCKING=1``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

SECTIONS = ("data", "tokenize", "forward", "loss", "backward", "clip", "optimizer", "other")


class Timers:
    """Per-step sums of the sections (inclusive timings; made exclusive in :meth:`close_step`)."""

    def __init__(self, clock: str) -> None:
        self.now = time.process_time if clock == "cpu" else time.perf_counter
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.last = None
        self._depth: dict[str, int] = {}

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            depth = self._depth.get(name, 0)
            if depth:  # re-entrant (a subclass calling its base): count the outer call only
                return fn(*args, **kwargs)
            self._depth[name] = 1
            t0 = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[name] = 0
                self.current[name] = self.current.get(name, 0.0) + self.now() - t0

        return timed

    def close_step(self, *_args) -> None:
        now = self.now()
        if self.last is not None:
            c = self.current
            step = {k: c.get(k, 0.0) for k in SECTIONS}
            step["forward"] = c.get("module", 0.0) - step["tokenize"] - step["loss"]
            step["other"] = (now - self.last) - sum(v for k, v in step.items() if k != "other")
            step["total"] = now - self.last
            self.steps.append(step)
        self.current = {}
        self.last = now


@contextlib.contextmanager
def patched(timers: Timers):
    """Wrap the functions the loop calls with timers; restore them after."""
    import torch

    import contrasent.train.loop as loop
    from contrasent.model.encoder import Encoder
    from contrasent.objectives import OBJECTIVES

    saved = []

    def patch(owner, attr, name):
        original = getattr(owner, attr)
        saved.append((owner, attr, original))
        setattr(owner, attr, timers.wrap(name, original))

    patch(Encoder, "tokenize", "tokenize")
    patch(loop.TrainModule, "forward", "module")
    for cls in OBJECTIVES.values():
        if "loss" in cls.__dict__:
            patch(cls, "loss", "loss")
    patch(torch.autograd, "backward", "backward")
    patch(torch.nn.utils, "clip_grad_norm_", "clip")
    patch(torch.optim.AdamW, "step", "optimizer")
    original_build = loop._Trainer._build_stream

    def build_stream(self):
        return _TimedStream(original_build(self), timers)

    saved.append((loop._Trainer, "_build_stream", original_build))
    loop._Trainer._build_stream = build_stream
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


class _TimedStream:
    """The loop's data stream with its ``next()`` timed; everything else passes through."""

    def __init__(self, stream, timers: Timers) -> None:
        self._stream, self._next = stream, timers.wrap("data", stream.__next__)

    def __iter__(self):
        return self

    def __next__(self):
        return self._next()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> None:
    import train as bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile-clock", choices=["cpu", "wall"], default="cpu")
    args = bench.parse_args(argv, ap)
    bench.quiet()
    import torch

    from throughput import PassCounter, matmul_peak

    bench.prepare(args)
    args.clock = args.profile_clock
    args.methods = bench.runnable_methods(args.methods, args.model)
    files = bench.data_files(Path(args.data_root))
    peak = bench.peak_gflops(args.model, matmul_peak, args.clock, args.precision)
    print(
        f"model {args.model}\nbatch {args.batch_size}, max_seq_length {args.max_seq_length}, "
        f"{args.precision}, torch threads {torch.get_num_threads()}, load "
        f"{os.getloadavg()[0]:.2f}, {args.clock} clock, median over steps "
        f"{args.warmup_steps + 1}..{args.steps}\nour speed options: "
        f"{bench.our_options(args) or 'none'}\nmatmul peak ({args.precision}) {peak:.1f} GFLOP/s\n"
    )
    head = " ".join(f"{s:>9s}" for s in (*SECTIONS, "total"))
    print(f"{'ms/step':10s} {head} {'pad':>6s} {'GFLOP/s':>8s} {'%peak':>6s}")
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        for method in args.methods:
            timers = Timers(args.clock)
            with PassCounter() as counter, patched(timers):
                run = bench.Run(counter=counter, on_mark=timers.close_step)
                bench.run_ours(method, args, files, os.path.join(tmp, method), run)
            steps = timers.steps[args.warmup_steps - 1 :]
            med = {k: statistics.median(s[k] for s in steps) * 1e3 for k in (*SECTIONS, "total")}
            _, pad, gflops = bench.step_stats([run], args.warmup_steps, args.clock)
            row = " ".join(f"{med[k]:9.1f}" for k in (*SECTIONS, "total"))
            print(f"{method:10s} {row} {pad:6.1%} {gflops:8.1f} {gflops / peak:6.1%}")
            share = " ".join(f"{med[k] / med['total']:9.1%}" for k in SECTIONS)
            print(f"{'':10s} {share}")


if __name__ == "__main__":
    main()
