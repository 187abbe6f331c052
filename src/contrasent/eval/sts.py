"""STS evaluation on SentEval's ``data/downstream`` layout: STS12-16, STS-B, SICK-R.

Score of a pair = cosine similarity of its two embeddings (float64); reported numbers are Spearman
and Pearson correlations with the gold scores, x100.

STS12-16 get three aggregations, because papers disagree on which one they report:

* ``all``: concatenate the year's subsets, one correlation (SimCSE, ConSERT, MTEB). Summary number.
* ``wmean``: per-subset correlations weighted by subset size (SentEval's default).
* ``mean``: plain mean of the per-subset correlations.

Reading follows SentEval's loaders: raw tab split (no CSV quoting: quotes are part of the text),
sentences whitespace-normalised like SentEval's ``s.split()`` + SimCSE's ``" ".join``, STS-B
sentences from columns 5 and 6 (extra source columns on some lines are ignored), SICK after its
header line. Pairs with an empty gold score (STS15/16: "not scored") are skipped and counted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr

from contrasent.errors import UserError, where
from contrasent.fileio import atomic_write_text

log = logging.getLogger(__name__)

ENV_VAR = "CONTRASENT_DATA"
STS_YEARS: dict[str, tuple[str, ...]] = {  # subset order as in SentEval
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
SPLIT_TASKS = ("STSBenchmark", "SICKRelatedness")
TASKS: tuple[str, ...] = (*STS_YEARS, *SPLIT_TASKS)
DEV_TASKS = SPLIT_TASKS  # the only tasks with a dev split
ALIASES: dict[str, tuple[str, ...]] = {
    "sts": TASKS,
    "all": TASKS,
    "sts12-16": tuple(STS_YEARS),
    "stsb": ("STSBenchmark",),
    "sts-b": ("STSBenchmark",),
    "sickr": ("SICKRelatedness",),
    "sick-r": ("SICKRelatedness",),
    "sick": ("SICKRelatedness",),
}
MODES = ("dev", "test")
SUMMARY = {**dict.fromkeys(STS_YEARS, "all"), **dict.fromkeys(SPLIT_TASKS, "test")}

Encode = Callable[[list[str]], Any]


@dataclass
class Pairs:
    """Scored sentence pairs of one file (one STS subset or one split)."""

    s1: list[str]
    s2: list[str]
    gold: np.ndarray
    n_skipped: int = 0


# ----------------------------------------------------------------------------- reading


#: where the data lives beside a checkout of this repository (the README's layout)
DEFAULT_DIRS = (
    Path("../shared/data/senteval"),
    Path(__file__).resolve().parents[3].parent / "shared" / "data" / "senteval",
)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The SentEval ``downstream`` folder: the argument, else ``$CONTRASENT_DATA``, else
    ``../shared/data/senteval`` (from the current folder or beside this checkout)."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR)
    if not data_dir:
        found = next((d for d in DEFAULT_DIRS if (d / "STS").is_dir()), None)
        if found is None:
            raise UserError(
                f"no STS data directory: pass --data-dir or set {ENV_VAR} to the SentEval "
                f"downstream folder (the one holding STS/ and SICK/); looked in "
                f"{', '.join(str(d.absolute()) for d in DEFAULT_DIRS)}"
            )
        return found
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (relative to {Path.cwd()})"
        raise UserError(f"STS data directory {root} does not exist or is not a folder{where}")
    return root


def _missing(task: str, path: Path, root: Path) -> UserError:
    hint = ""
    for sub in ("senteval", "downstream", "data/downstream"):
        if (root / sub / path.relative_to(root)).is_file():
            hint = f" (found it under {root / sub}: pass that folder as the data directory)"
            break
    return UserError(
        f"{task}: expected {path.name} at {path}, not found{hint}. The data directory must "
        "use SentEval's downstream layout (STS/STS12-en-test/..., STS/STSBenchmark/, SICK/)"
    )


def _read_lines(path: Path, task: str, root: Path) -> list[str]:
    """Lines split on '\\n' only (str.splitlines would also split on U+2028, U+0085, ...)."""
    if not path.is_file():
        raise _missing(task, path, root)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{where(path, line)}: not valid UTF-8 ({e.reason})") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the final newline terminates the last line, it does not open one
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _clean(sentence: str, path: Path, line: int) -> str:
    out = " ".join(sentence.split())
    if not out:
        raise UserError(f"{where(path, line)}: empty sentence")
    return out


def _score(text: str, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"{where(path, line)}: gold score {text!r} is not a number")
    return value


def read_sts_subset(root: Path, task: str, subset: str) -> Pairs:
    """One STS12-16 subset: ``STS.input.<subset>.txt`` + ``STS.gs.<subset>.txt``."""
    folder = root / "STS" / f"{task}-en-test"
    inp, gs = folder / f"STS.input.{subset}.txt", folder / f"STS.gs.{subset}.txt"
    pairs = read_sts_inputs(root, task, subset)
    gs_lines = _read_lines(gs, task, root)
    if len(pairs) != len(gs_lines):
        raise UserError(
            f"{task}: {inp} has {len(pairs)} lines but {gs} has {len(gs_lines)}; "
            "line i of the gold file scores the pair on line i"
        )
    s1, s2, gold, skipped = [], [], [], 0
    for i, ((a, b), g) in enumerate(zip(pairs, gs_lines, strict=True), 1):
        if not g.strip():  # STS15/16: pair shipped without a gold score
            skipped += 1
            continue
        gold.append(_score(g.strip(), gs, i))
        s1.append(a)
        s2.append(b)
    return Pairs(s1, s2, np.asarray(gold, dtype=np.float64), skipped)


def read_sts_inputs(root: Path, task: str, subset: str) -> list[tuple[str, str]]:
    """Every sentence pair of an STS12-16 subset's input file, scored or not (the unlabeled
    texts of the transductive setting: ``data.kind: sts_texts``)."""
    path = root / "STS" / f"{task}-en-test" / f"STS.input.{subset}.txt"
    pairs = []
    for i, line in enumerate(_read_lines(path, task, root), 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise UserError(
                f"{where(path, i)}: expected 2 tab-separated sentences, found {len(fields)} fields"
            )
        pairs.append((_clean(fields[0], path, i), _clean(fields[1], path, i)))
    return pairs


def read_stsb(root: Path, split: str) -> Pairs:
    """``sts-<split>.csv``: genre, file, year, id, score, s1, s2 [, source columns]."""
    path = root / "STS" / "STSBenchmark" / f"sts-{split}.csv"
    s1, s2, gold = [], [], []
    for i, line in enumerate(_read_lines(path, "STSBenchmark", root), 1):
        # Raw split like SentEval (no CSV quoting); extra trailing columns are source notes.
        fields = line.split("\t")
        if len(fields) < 7:
            raise UserError(
                f"{where(path, i)}: expected at least 7 tab-separated fields "
                f"(genre, file, year, id, score, sentence1, sentence2), found {len(fields)}"
            )
        gold.append(_score(fields[4].strip(), path, i))
        s1.append(_clean(fields[5], path, i))
        s2.append(_clean(fields[6], path, i))
    return Pairs(s1, s2, np.asarray(gold, dtype=np.float64))


def read_sick(root: Path, split: str) -> Pairs:
    """``SICK_trial.txt`` (dev) / ``SICK_test_annotated.txt`` (test) / ``SICK_train.txt``,
    columns named in a header."""
    name = {"dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt", "train": "SICK_train.txt"}
    name = name[split]
    path = root / "SICK" / name
    lines = _read_lines(path, "SICKRelatedness", root)
    header = lines[0].split("\t") if lines else []
    cols = ("sentence_A", "sentence_B", "relatedness_score")
    if any(c not in header for c in cols):
        raise UserError(f"{where(path, 1)}: expected a header line naming {', '.join(cols)}")
    ia, ib, isc = (header.index(c) for c in cols)
    s1, s2, gold = [], [], []
    for i, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise UserError(
                f"{where(path, i)}: expected {len(header)} tab-separated fields, found {len(fields)}"
            )
        gold.append(_score(fields[isc].strip(), path, i))
        s1.append(_clean(fields[ia], path, i))
        s2.append(_clean(fields[ib], path, i))
    return Pairs(s1, s2, np.asarray(gold, dtype=np.float64))


def load_task(root: Path, task: str, mode: str) -> dict[str, Pairs]:
    """Subset name -> pairs (STS12-16), or split name -> pairs (STS-B, SICK-R)."""
    if task in STS_YEARS:
        return {sub: read_sts_subset(root, task, sub) for sub in STS_YEARS[task]}
    reader = read_stsb if task == "STSBenchmark" else read_sick
    splits = ("dev",) if mode == "dev" else ("test", "dev")
    return {split: reader(root, split) for split in splits}


# ----------------------------------------------------------------------------- scoring


def resolve_tasks(tasks: str | Iterable[str] | None, mode: str) -> list[str]:
    """Canonical task names in table order from names/aliases (case-insensitive, comma lists)."""
    if mode not in MODES:
        raise UserError(f"unknown STS mode {mode!r}: choose one of {', '.join(MODES)}")
    default = DEV_TASKS if mode == "dev" else TASKS
    if tasks is None:
        return list(default)
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for name in names for n in name.split(",") if n.strip()]
    lookup = {t.lower(): (t,) for t in TASKS} | ALIASES
    chosen: set[str] = set()
    for name in names:
        key = name.lower()
        if key not in lookup:
            valid = ", ".join([*TASKS, *ALIASES])
            raise UserError(f"unknown STS task {name!r}: choose from {valid}")
        found = lookup[key]
        if mode == "dev":  # aliases shrink to the dev-capable tasks; a named test-only task errs
            if key in ALIASES:
                found = tuple(t for t in found if t in DEV_TASKS)
            elif found[0] not in DEV_TASKS:
                raise UserError(
                    f"{found[0]} has no dev split; dev mode evaluates {', '.join(DEV_TASKS)}"
                )
        chosen.update(found)
    if not chosen:
        raise UserError(f"no STS task selected by {names!r} in {mode} mode")
    return [t for t in TASKS if t in chosen]


def _as_float64(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, maybe on GPU or in bf16
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def embed_unique(
    encode: Encode,
    sentences: Iterable[str],
    batch_size: int,
    label: str = "encode",
    progress: bool = False,
) -> tuple[dict[str, int], np.ndarray]:
    """Embed each distinct sentence once; longest first so padding is small and OOM comes early."""
    from tqdm.auto import tqdm

    uniq = sorted(set(sentences), key=lambda s: (-len(s), s))
    parts = []
    bar = tqdm(total=len(uniq), desc=label, unit="sent", disable=not progress, leave=False)
    for start in range(0, len(uniq), batch_size):
        chunk = uniq[start : start + batch_size]
        emb = _as_float64(encode(chunk))
        if emb.ndim != 2 or emb.shape[0] != len(chunk):
            raise ValueError(
                f"encode returned shape {emb.shape} for {len(chunk)} sentences; "
                "expected (n_sentences, dim)"
            )
        parts.append(emb)
        bar.update(len(chunk))
    bar.close()
    matrix = np.concatenate(parts) if parts else np.zeros((0, 1))
    return {s: i for i, s in enumerate(uniq)}, matrix


def cosine_scores(pairs: Pairs, index: dict[str, int], emb: np.ndarray) -> np.ndarray:
    """Row-wise cosine in float64; a zero vector scores 0 (as sklearn's paired cosine does)."""
    a = emb[[index[s] for s in pairs.s1]]
    b = emb[[index[s] for s in pairs.s2]]
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = na * nb
    dots = np.einsum("ij,ij->i", a, b)
    return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)


def correlations(gold: np.ndarray, pred: np.ndarray) -> tuple[float | None, float | None]:
    """(Spearman, Pearson) x100; None where undefined (fewer than 2 pairs, constant or NaN input)."""
    if len(gold) < 2 or not np.all(np.isfinite(pred)) or np.ptp(gold) == 0 or np.ptp(pred) == 0:
        return None, None
    return 100.0 * float(spearmanr(gold, pred)[0]), 100.0 * float(pearsonr(gold, pred)[0])


def _mean(values: Sequence[float | None], weights: Sequence[float] | None = None) -> float | None:
    if not values or any(v is None for v in values):
        return None
    w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(np.dot(w, np.asarray(values, dtype=np.float64)) / w.sum())


def score_year(data: dict[str, Pairs], preds: dict[str, np.ndarray]) -> dict[str, Any]:
    """STS12-16 result: all / wmean / mean aggregations plus per-subset numbers."""
    subsets, sp, pe, sizes = {}, [], [], []
    for name, pairs in data.items():
        s, p = correlations(pairs.gold, preds[name])
        subsets[name] = {"spearman": s, "pearson": p, "n_pairs": len(pairs.gold)}
        sp.append(s)
        pe.append(p)
        sizes.append(len(pairs.gold))
    s_all, p_all = correlations(
        np.concatenate([p.gold for p in data.values()]), np.concatenate(list(preds.values()))
    )
    return {
        "spearman": {"all": s_all, "wmean": _mean(sp, sizes), "mean": _mean(sp)},
        "pearson": {"all": p_all, "wmean": _mean(pe, sizes), "mean": _mean(pe)},
        "n_pairs": sum(sizes),
        "n_skipped": sum(p.n_skipped for p in data.values()),
        "subsets": subsets,
    }


def score_splits(data: dict[str, Pairs], preds: dict[str, np.ndarray]) -> dict[str, Any]:
    """STS-B / SICK-R result: one correlation per split."""
    out: dict[str, Any] = {"spearman": {}, "pearson": {}, "n_pairs": {}}
    for split, pairs in data.items():
        out["spearman"][split], out["pearson"][split] = correlations(pairs.gold, preds[split])
        out["n_pairs"][split] = len(pairs.gold)
    return out


def evaluate_sts(
    encode: Encode,
    data_dir: str | os.PathLike | None = None,
    mode: str = "test",
    tasks: str | Iterable[str] | None = None,
    batch_size: int = 128,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``encode`` (list of sentences -> [n, dim] array) on the STS tasks.

    ``mode="dev"``: STS-B dev + SICK-R trial only (model selection while training).
    ``mode="test"``: every task; STS-B and SICK-R report both test and dev.
    ``batch_size``: sentences per ``encode`` call; ``progress``: a bar per task (sentences/s).
    Returns a JSON-ready dict (see module doc);
    ``avg`` is the mean of the summary Spearman column ("all" for STS12-16, "test" for STS-B and
    SICK-R; the dev numbers in dev mode). An undefined correlation (e.g. a collapsed model giving
    constant scores) is None, and so is ``avg`` then.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    selected = resolve_tasks(tasks, mode)
    root = resolve_data_dir(data_dir)
    # Read everything first so a missing or malformed file fails before any encoding time.
    loaded = {task: load_task(root, task, mode) for task in selected}
    results: dict[str, Any] = {}
    for task, data in loaded.items():
        start = time.perf_counter()
        index, emb = embed_unique(
            encode, (s for p in data.values() for s in (*p.s1, *p.s2)), batch_size, task, progress
        )
        preds = {name: cosine_scores(pairs, index, emb) for name, pairs in data.items()}
        scorer = score_year if task in STS_YEARS else score_splits
        results[task] = scorer(data, preds)
        log.info("%s: %d sentences in %.1fs", task, len(index), time.perf_counter() - start)
        if results[task].get("n_skipped"):
            log.info("%s: skipped %d pairs with no gold score", task, results[task]["n_skipped"])
    column = {t: ("dev" if mode == "dev" else SUMMARY[t]) for t in results}
    avg = _mean([results[t]["spearman"][column[t]] for t in results])
    return {"mode": mode, "tasks": results, "avg": avg}


# ----------------------------------------------------------------------------- output


def summary_row(results: dict[str, Any]) -> dict[str, float | None]:
    """Task -> the Spearman number shown in the table (dev numbers in dev mode), plus "Avg."."""
    dev = results["mode"] == "dev"
    row = {
        task: res["spearman"]["dev" if dev else SUMMARY[task]]
        for task, res in results["tasks"].items()
    }
    row["Avg."] = results["avg"]
    return row


def table_caption(results: dict[str, Any]) -> str:
    """What the numbers of :func:`format_table` are."""
    if results["mode"] == "dev":
        return "STS dev: Spearman x100 of cosine similarity (STS-B dev, SICK-R trial)"
    return (
        "STS: Spearman x100 of cosine similarity; STS12-16 'all' (the year's subsets merged), "
        "STS-B and SICK-R test"
    )


def format_table(results: dict[str, Any]) -> str:
    """The SimCSE README table: one column per task (table order) + Avg., Spearman x100."""
    return format_rows([(None, results)])


def format_rows(rows: Sequence[tuple[str | None, dict[str, Any]]]) -> str:
    """Several results (e.g. before training and after each stage) as rows of one table; a
    label column when the rows are labelled. Tasks: the union, in table order."""
    summaries = [(label, summary_row(res)) for label, res in rows]
    tasks = {t for _, row in summaries for t in row}
    names = [t for t in TASKS if t in tasks] + ["Avg."]
    labelled = any(label is not None for label, _ in summaries)
    header = ([""] if labelled else []) + names
    body = [
        ([label or ""] if labelled else [])
        + ["-" if row.get(n) is None else f"{row[n]:.2f}" for n in names]
        for label, row in summaries
    ]
    widths = [max(len(r[i]) for r in [header, *body]) + 2 for i in range(len(header))]
    rule = "+" + "+".join("-" * w for w in widths) + "+"

    def line(values: list[str]) -> str:
        return "|" + "|".join(v.center(w) for v, w in zip(values, widths, strict=True)) + "|"

    return "\n".join([rule, line(header), rule, *[line(b) for b in body], rule])


def write_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``results`` as JSON atomically (invalid JSON, e.g. NaN, raises before writing)."""
    atomic_write_text(path, json.dumps(results, indent=2, allow_nan=False) + "\n")
