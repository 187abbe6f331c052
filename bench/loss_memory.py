"""Peak memory of the gradient cache's loss step (step 2: full-batch loss on the cached embeddings,
backward to the embeddings) at a large batch, one-pass similarity matrix vs anchor chunks.

    python bench/loss_memory.py                         # batch 16384, dim 384, 1 hard negative
    python bench/loss_memory.py --batch 4096 --negatives 0

Each variant runs in a fresh subprocess: the embeddings are allocated first, the RSS high-water
mark is reset (``/proc/self/clear_refs``, Linux), then the loss and its backward run; the report
is the peak RSS growth over the embeddings (what the loss step itself adds). "one pass" is
:func:`contrasent.objectives.functional.info_nce` (B x C logits at once, the code before the
chunking); "chunked" is :func:`contrasent.objectives.inbatch.gathered_info_nce`, the loss every
in-batch objective now uses.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, time, torch
from contrasent.objectives.functional import info_nce
from contrasent.objectives.inbatch import gathered_info_nce

variant, b, h, k, chunk = sys.argv[1], *map(int, sys.argv[2:6])
torch.manual_seed(0)
embs = [torch.randn(b, h, requires_grad=True) for _ in range(2 + k)]

def rss_peak_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current RSS
base = rss_kb()
t0 = time.perf_counter()
if variant == "one_pass":
    loss = info_nce(embs[0], embs[1], scale=20.0, hard_negatives=embs[2:] or None)
else:
    loss, _ = gathered_info_nce(embs[0], embs[1], embs[2:], scale=20.0, chunk_rows=chunk)
loss.backward()
print(json.dumps({"peak_mb": (rss_peak_kb() - base) / 1024, "seconds": time.perf_counter() - t0,
                  "loss": loss.item()}))
"""


def measure(variant: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-c", CHILD, variant, str(args.batch), str(args.dim)]
    cmd += [str(args.negatives), str(args.chunk)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=1024, help="anchor rows per chunk")
    args = parser.parse_args()
    one, chunked = measure("one_pass", args), measure("chunked", args)
    assert abs(one["loss"] - chunked["loss"]) < 1e-4 * max(1.0, abs(one["loss"])), (one, chunked)
    cols = args.batch * (1 + args.negatives)
    print(f"loss step, batch {args.batch} x {cols} columns, dim {args.dim}, CPU fp32")
    print(f"{'':>10} {'peak MB':>10} {'seconds':>9}")
    for name, r in (("one pass", one), ("chunked", chunked)):
        print(f"{name:>10} {r['peak_mb']:>10.0f} {r['seconds']:>9.2f}")
    print(
        f"ratio chunked / one pass: memory {chunked['peak_mb'] / one['peak_mb']:.3f}x, "
        f"time {chunked['seconds'] / one['seconds']:.2f}x (loss {one['loss']:.4f} both)"
    )


if __name__ == "__main__":
    main()
