"""`contrasent data prepare` measurements (issue 21): the sentence splitters compared on a few
hundred lines, throughput on wiki1m-head and the Gutenberg books, and the memory of the
near-duplicate state per entry.

    PYTHONPATH=src python bench/prepare_data.py [--out /tmp/prep] [--skip-throughput]

Prints one JSON object. Numbers depend on the CPU and its load: report them with both.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "corpus"
TRICKY = [
    "Mr. Smith paid $3.50 for it. Then he left.",
    "Dr. Watson, i.e. the doctor, arrived at 5 p.m. on Jan. 3. He was late.",
    "The U.S. economy grew 2.5% in 2019. Analysts e.g. at J.P. Morgan agreed.",
    "See Fig. 2 and Sec. 4.1 for details. The results hold.",
    'She said "Stop." He did not. It was 10 a.m. already.',
]
TRICKY_SENTENCES = [2, 2, 2, 2, 3]


def compare_splitters(n: int = 300) -> dict:
    from contrasent.data.sentences import make_splitter

    wiki = (DATA / "wiki1m-head.txt").read_text().splitlines()[:n]
    book = (DATA / "gutenberg" / "austen-emma.txt").read_text().splitlines()[2000 : 2000 + n]
    wikitext = [
        line.strip()
        for line in (DATA / "wikitext-2-raw-test.txt").read_text().splitlines()
        if line.strip() and not line.strip().startswith("=")
    ][:n]
    out = {}
    for name in ("syntok", "pysbd", "regex"):
        split = make_splitter(name)
        t = time.perf_counter()
        wiki_split = sum(len(split(line)) > 1 for line in wiki)
        book_sents = len(split(" ".join(line.strip() for line in book)))
        wt_sents = sum(len(split(p)) for p in wikitext)
        tricky = sum(len(split(t_)) == k for t_, k in zip(TRICKY, TRICKY_SENTENCES, strict=True))
        out[name] = {
            "wiki1m lines split in 2+ (each is one sentence)": f"{wiki_split}/{len(wiki)}",
            f"gutenberg emma, {n} tokenized lines -> sentences": book_sents,
            f"wikitext-2 {len(wikitext)} paragraphs -> sentences": wt_sents,
            "abbreviation/decimal cases right": f"{tricky}/{len(TRICKY)}",
            "seconds": round(time.perf_counter() - t, 2),
        }
    return out


def near_dup_memory(entries: int = 20_000) -> dict:
    from contrasent.data.dedup import NearDedup, normalize

    lines = (DATA / "wiki1m-head.txt").read_text().splitlines()
    keys = [normalize(line) for line in lines if line.strip()]
    keys = (keys * (entries // len(keys) + 1))[:entries]
    near = NearDedup(window=10**9)  # one generation, all entries kept
    keys = [f"{i} {k}" for i, k in enumerate(keys)]  # distinct texts
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = 0
    for k in keys:
        kept += not near.seen(k)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per = used / max(kept, 1)
    return {
        "entries kept": kept,
        "bytes per LSH entry (64 permutations)": round(per),
        "bound at near_window 100000 (2 generations)": f"{2 * 100_000 * per / 2**20:.0f} MiB",
    }


def throughput(out: Path) -> dict:
    from contrasent.data.prepare import PrepareConfig, prepare

    runs = {
        "wiki1m-head (unit line)": PrepareConfig(
            input=[str(DATA / "wiki1m-head.txt")], output=str(out / "wiki"), validation=0.01
        ),
        "gutenberg 17 books (unit file)": PrepareConfig(
            input=[str(p) for p in sorted((DATA / "gutenberg").glob("*.txt"))],
            output=str(out / "gutenberg"),
            unit="file",
            validation=0.01,
            documents=True,
        ),
    }
    result = {}
    for name, cfg in runs.items():
        report = prepare(cfg)
        result[name] = {
            k: report[k] for k in ("seconds", "sentences_per_s", "documents_per_s", "counts")
        }
    result["peak RSS MiB (whole process)"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/contrasent-prepare-bench")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    report = {"splitters": compare_splitters(), "near_dup_memory": near_dup_memory()}
    if not args.skip_throughput:
        report["throughput"] = throughput(Path(args.out))
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
