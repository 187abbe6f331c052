"""The SentEval ``data/downstream`` folder: where it is, and readers of its STS sets (STS12-16,
STS-B, SICK-R) for evaluation and for the ``sts_texts`` data kind.

Reading follows SentEval's loaders: raw tab split (no CSV quoting: quotes are part of the text),
sentences whitespace-normalised like SentEval's ``s.split()`` + SimCSE's ``" ".join``, STS-B
sentences from columns 5 and 6 (extra source columns on some lines are ignored), SICK after its
header line. Pairs with an empty gold score (STS15/16: "not scored") are skipped and counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contrasent.core.errors import UserError, finite_number, where

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
                f"no evaluation data directory: pass --data-dir or set {ENV_VAR} to the "
                "SentEval downstream folder (the one holding STS/, SICK/, MR/, ...); looked in "
                f"{', '.join(str(d.absolute()) for d in DEFAULT_DIRS)}"
            )
        return found
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (relative to {Path.cwd()})"
        raise UserError(f"data directory {root} does not exist or is not a folder{where}")
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
        gold.append(finite_number(g.strip(), gs, i, "gold score"))
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
        gold.append(finite_number(fields[4].strip(), path, i, "gold score"))
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
        gold.append(finite_number(fields[isc].strip(), path, i, "gold score"))
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
