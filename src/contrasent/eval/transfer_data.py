"""Reading SentEval's transfer tasks from its ``data/downstream`` layout, exactly as SentEval does.

Every detail that changes a published number is kept: the file encodings (latin-1 for MR, CR, SUBJ,
MPQA and TREC; UTF-8 for SST, MRPC and SICK), whitespace tokenisation joined back with single spaces
(SimCSE's batcher does ``" ".join(tokens)``), empty lines kept as empty sentences (CR and MPQA have
a few; SentEval embeds them), TREC's coarse label before the first ``:`` with the fine label
dropped, the MRPC/SICK header line skipped, and SentEval's sort of each split by (token count,
label) -- or (count A, count B, label) for pairs -- because the classifier's folds and batches are
drawn over that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contrasent.core.errors import UserError, where


@dataclass(frozen=True)
class TaskSpec:
    """How SentEval evaluates one transfer task."""

    name: str
    protocol: str  # "inner_kfold" (one set), "kfold" (train/test), "split" (train/dev/test)
    nclasses: int
    pairs: bool = False  # features [|u - v|, u * v] of a sentence pair


SPECS: dict[str, TaskSpec] = {
    "MR": TaskSpec("MR", "inner_kfold", 2),
    "CR": TaskSpec("CR", "inner_kfold", 2),
    "SUBJ": TaskSpec("SUBJ", "inner_kfold", 2),
    "MPQA": TaskSpec("MPQA", "inner_kfold", 2),
    "SST2": TaskSpec("SST2", "split", 2),
    "TREC": TaskSpec("TREC", "kfold", 6),
    "MRPC": TaskSpec("MRPC", "kfold", 2, pairs=True),
    "SICKEntailment": TaskSpec("SICKEntailment", "split", 3, pairs=True),
}
TREC_LABELS = {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3, "LOC": 4, "NUM": 5}
SICK_LABELS = {"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2}
BINARY_FILES = {  # (label 1 file, label 0 file), SentEval's order
    "MR": ("MR/rt-polarity.pos", "MR/rt-polarity.neg"),
    "CR": ("CR/custrev.pos", "CR/custrev.neg"),
    "SUBJ": ("SUBJ/subj.objective", "SUBJ/subj.subjective"),
    "MPQA": ("MPQA/mpqa.pos", "MPQA/mpqa.neg"),
}


@dataclass
class Split:
    """One split of a task: sentences (or sentence pairs) and int labels, in SentEval's order."""

    texts: list[str]
    labels: np.ndarray
    texts_b: list[str] | None = None  # second sentence of each pair (MRPC, SICK-E)

    def __len__(self) -> int:
        return len(self.texts)

    def sentences(self) -> list[str]:
        return self.texts + (self.texts_b or [])


def _read(root: Path, rel: str, task: str, encoding: str) -> tuple[Path, str]:
    path = root / rel
    if not path.is_file():
        raise UserError(
            f"{task}: expected {path.name} at {path}, not found. The data directory must use "
            f"SentEval's downstream layout ({rel.split('/')[0]}/... beside STS/ and SICK/)"
        )
    data = path.read_bytes()
    try:
        return path, data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{where(path, line)}: not valid UTF-8 ({e.reason})") from None


def _lines(text: str) -> list[str]:
    """Lines as Python's text-mode ``for line in f`` yields them (\\n, \\r\\n or \\r ends a
    line; a final newline does not open an empty last line)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _join(text: str) -> str:
    return " ".join(text.split())


def _sorted(texts: list[str], labels: list[int], texts_b: list[str] | None = None) -> Split:
    """SentEval's stable sort by (token count, label), or (count A, count B, label) for pairs."""
    if texts_b is None:
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i].split()), labels[i]))
    else:
        order = sorted(
            range(len(texts)),
            key=lambda i: (len(texts[i].split()), len(texts_b[i].split()), labels[i]),
        )
    return Split(
        [texts[i] for i in order],
        np.asarray([labels[i] for i in order], dtype=np.int64),
        None if texts_b is None else [texts_b[i] for i in order],
    )


def read_binary(root: Path, task: str) -> dict[str, Split]:
    """MR, CR, SUBJ, MPQA: one sentence a line; SentEval reads ``f.read().splitlines()``."""
    texts: list[str] = []
    labels: list[int] = []
    for label, rel in zip((1, 0), BINARY_FILES[task], strict=True):
        _, text = _read(root, rel, task, "latin-1")
        lines = text.splitlines()
        texts += [_join(line) for line in lines]
        labels += [label] * len(lines)
    return {"all": _sorted(texts, labels)}


def _sst_split(root: Path, split: str) -> Split:
    path, text = _read(root, f"SST/binary/sentiment-{split}", "SST2", "utf-8")
    texts, labels = [], []
    for i, line in enumerate(_lines(text), 1):
        fields = line.strip().split("\t")
        if len(fields) < 2 or fields[1] not in ("0", "1"):
            raise UserError(f"{where(path, i)}: expected 'sentence<TAB>0|1'")
        texts.append(_join(fields[0]))
        labels.append(int(fields[1]))
    return _sorted(texts, labels)


def read_sst2(root: Path) -> dict[str, Split]:
    """SST/binary: ``sentence<TAB>label`` a line; train / dev / test."""
    return {split: _sst_split(root, split) for split in ("train", "dev", "test")}


def _trec_split(root: Path, name: str) -> Split:
    path, text = _read(root, f"TREC/{name}", "TREC", "latin-1")
    texts, labels = [], []
    for i, line in enumerate(_lines(text), 1):
        target, colon, rest = line.strip().partition(":")
        fine, space, question = rest.partition(" ")
        if not colon or not space or target not in TREC_LABELS:
            valid = ", ".join(TREC_LABELS)
            raise UserError(
                f"{where(path, i)}: expected 'COARSE:fine question' with COARSE in {valid}"
            )
        texts.append(_join(question))
        labels.append(TREC_LABELS[target])
    return _sorted(texts, labels)


def read_trec(root: Path) -> dict[str, Split]:
    """TREC: ``COARSE:fine question`` a line; the 6 coarse classes; train_5500 / TREC_10."""
    return {
        "train": _trec_split(root, "train_5500.label"),
        "test": _trec_split(root, "TREC_10.label"),
    }


def _tsv_rows(root: Path, rel: str, task: str, width: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a tab-separated file after its header line."""
    path, text = _read(root, rel, task, "utf-8")
    rows = []
    for i, line in enumerate(_lines(text), 1):
        if i == 1:
            continue
        fields = line.strip().split("\t")
        if len(fields) < width:
            raise UserError(
                f"{where(path, i)}: expected at least {width} tab-separated fields, found "
                f"{len(fields)}"
            )
        rows.append((i, fields))
    return rows


def _mrpc_split(root: Path, split: str) -> Split:
    rel = f"MRPC/msr_paraphrase_{split}.txt"
    a, b, labels = [], [], []
    for i, fields in _tsv_rows(root, rel, "MRPC", 5):
        if fields[0] not in ("0", "1"):
            raise UserError(f"{where(root / rel, i)}: quality {fields[0]!r} is not 0 or 1")
        a.append(_join(fields[3]))
        b.append(_join(fields[4]))
        labels.append(int(fields[0]))
    return _sorted(a, labels, b)


def read_mrpc(root: Path) -> dict[str, Split]:
    """MRPC: quality, id1, id2, sentence1, sentence2 after a header; train / test."""
    return {split: _mrpc_split(root, split) for split in ("train", "test")}


def _sick_split(root: Path, name: str) -> Split:
    rel = f"SICK/{name}"
    a, b, labels = [], [], []
    for i, fields in _tsv_rows(root, rel, "SICKEntailment", 5):
        if fields[4] not in SICK_LABELS:
            raise UserError(
                f"{where(root / rel, i)}: entailment label {fields[4]!r} is not one of "
                f"{', '.join(SICK_LABELS)}"
            )
        a.append(_join(fields[1]))
        b.append(_join(fields[2]))
        labels.append(SICK_LABELS[fields[4]])
    return _sorted(a, labels, b)


def read_sick_entailment(root: Path) -> dict[str, Split]:
    """SICK-E: sentence_A, sentence_B, entailment_judgment; train / trial (dev) / test."""
    names = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
    return {split: _sick_split(root, name) for split, name in names.items()}


def load_transfer_task(root: Path, task: str) -> dict[str, Split]:
    """Split name -> data: ``all`` (MR, CR, SUBJ, MPQA), ``train``/``test`` (TREC, MRPC) or
    ``train``/``dev``/``test`` (SST2, SICKEntailment)."""
    if task in BINARY_FILES:
        return read_binary(root, task)
    readers = {
        "SST2": read_sst2,
        "TREC": read_trec,
        "MRPC": read_mrpc,
        "SICKEntailment": read_sick_entailment,
    }
    return readers[task](root)
