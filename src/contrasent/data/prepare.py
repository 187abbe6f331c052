"""``contrasent data prepare``: raw documents -> a training file (one sentence a line), an
optional held-out file for ``data.validation``, an optional documents file for DeCLUTR, and a
report with a count for every step.

Steps, in order, each counted: read documents (a .txt file: one document a line, blank-line
paragraphs or the whole file; any other source of :mod:`contrasent.data.readers`: each row's
text) -> language filter (py3langid, per document) -> documents output (whitespace-normalised,
one a line, long enough for DeCLUTR's spans) -> sentence splitting (:mod:`.sentences`) ->
length filters (characters, words, the model's tokens) -> exact and near-duplicate removal and
the hash-based held-out split (:mod:`.dedup`) -> train.txt / validation.txt.

Streaming: documents are read one at a time (a paragraph or file document is held while it is
read), sentences are split in blocks, the duplicate state is bounded (:mod:`.dedup`), so memory
does not grow with the corpus. Outputs go to temporary files renamed into place at the end:
a killed run leaves no half-written file, and a re-run (deterministic) redoes the work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from contrasent.core.errors import UserError
from contrasent.core.fileio import atomic_write_text, make_folder, no_room, temp_sibling
from contrasent.core.options import parse_shard
from contrasent.data.dedup import ExactDedup, NearDedup, held_out, normalize, text_hash
from contrasent.data.readers import ReadStats, detect_format, iter_lines, read_texts
from contrasent.data.sentences import SPLITTERS, make_splitter, normalize_space, split_stream

log = logging.getLogger(__name__)
#: the counts every report has (documents_* counts appear with their options)
STEPS = (
    "documents",
    "sentences",
    "too_short_chars",
    "too_few_words",
    "too_many_words",
    "exact_duplicates",
    "near_duplicates",
    "train",
    "validation",
)
_MAX_LINE = 1 << 26  # a .txt line (document) over 64 MB is an error: no memory surprise


@dataclass
class PrepareConfig:
    """Cut raw documents into sentences, filter, de-duplicate and hold out a validation part."""

    input: list[str] = field(default_factory=list)
    """Input files or sources: .txt (see unit), .jsonl/.csv/.tsv(.gz)/.parquet, a
    datasets.save_to_disk folder or hf:org/name[:config][@split] (each row a document)."""

    output: str = ""
    """Output folder: train.txt, validation.txt (with validation), documents.txt (with
    documents) and report.json. With --shard I/N: OUTPUT.shard-I-of-N/."""

    unit: Literal["line", "paragraph", "file"] = "line"
    """What a document is in a .txt input: a line, a blank-line separated paragraph, the file."""

    columns: dict[str, str | int] | None = None
    """The text column of a table input, {text: body} (default: `text` or the only column)."""

    split: Literal["syntok", "pysbd", "regex", "none"] = "syntok"
    """Sentence splitter (see contrasent.data.sentences); none keeps each document whole."""

    language: str = "en"
    """Language of the text (pysbd's rules; and the language kept with lang_filter)."""

    lang_filter: bool = False
    """Drop documents whose detected language (py3langid, offline) is not `language`."""

    min_chars: int = 10
    """Drop sentences shorter than this (the TSDAE walkthrough kept sentences over 10 chars)."""

    min_words: int = 3
    """Drop sentences with fewer words (whitespace-separated)."""

    max_words: int = 128
    """Drop sentences with more words (0: no limit)."""

    tokenizer: str | None = None
    """A model folder or hub id whose tokenizer counts tokens for min_tokens / max_tokens."""

    min_tokens: int = 0
    """Drop sentences with fewer tokens of `tokenizer` (no special tokens)."""

    max_tokens: int = 0
    """Drop sentences with more tokens of `tokenizer` (0: no limit)."""

    exact_dup: bool = True
    """Drop exact duplicates (after normalisation: case, punctuation, whitespace)."""

    near_dup: bool = True
    """Drop near duplicates (MinHash LSH on character 5-grams, Jaccard >= near_threshold)."""

    near_threshold: float = 0.8
    """Estimated Jaccard similarity at or above which a sentence is a near duplicate."""

    exact_window: int = 1_000_000
    """Exact-duplicate memory: found within the last exact_window..2x kept sentences
    (state <= 2 x exact_window x ~78 bytes: about 150 MB at the default)."""

    near_window: int = 100_000
    """Near-duplicate memory: found within the last near_window..2x kept sentences
    (state <= 2 x near_window x ~1.86 KB: about 355 MB at the default)."""

    validation: float = 0.0
    """Fraction held out to validation.txt, by a hash of each sentence's normalised text (a
    grown corpus keeps its old held-out lines held out)."""

    documents: bool = False
    """Also write documents.txt: one whitespace-normalised document a line (DeCLUTR)."""

    documents_min_words: int = 300
    """Shortest document kept in documents.txt (DeCLUTR samples spans: num_anchors x
    max_span_len x 2 tokens must fit)."""

    shard: str | None = None
    """I/N: prepare only documents I, I+N, I+2N... (from 0), into OUTPUT.shard-I-of-N/.
    Duplicates are removed only WITHIN a shard: a sentence found in two shards stays in both
    (on the same side of --validation, which hashes the sentence). Run data prepare once more
    over the shards' train.txt (--unit line --split none) to remove those."""

    seed: int = 0
    """Key of the held-out hash."""

    on_error: Literal["raise", "skip"] = "raise"
    """Invalid UTF-8 / malformed rows: raise (file:line) or count and skip."""

    def validate(self) -> None:
        if not self.input or not self.output:
            raise UserError("data prepare needs INPUT... and --output FOLDER")
        if self.split not in SPLITTERS:
            raise UserError(f"--split must be one of {', '.join(SPLITTERS)}")
        if not 0.0 <= self.validation < 1.0:
            raise UserError(f"--validation must be a fraction in [0, 1), got {self.validation}")
        if (self.min_tokens or self.max_tokens) and not self.tokenizer:
            raise UserError("--min_tokens / --max_tokens need --tokenizer MODEL")
        for name in ("exact_window", "near_window"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1")
        for p in self.input:
            if not str(p).startswith("hf:") and not Path(str(p).rpartition("@")[0] or p).exists():
                raise UserError(f"{p}: no such file or folder")
        parse_shard(self.shard)


# ----------------------------------------------------------------------------- reading


class _Progress:
    """Rows/s and, where the input size is known, an ETA, logged every few seconds."""

    def __init__(self, total_bytes: int | None, every: float = 5.0) -> None:
        self.total, self.every = total_bytes, every
        self.start = self.last = time.monotonic()
        self.done_bytes = 0

    def tick(self, counts: Counter) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        rate = counts["sentences"] / max(now - self.start, 1e-9)
        text = f"{counts['documents']} documents, {counts['sentences']} sentences ({rate:,.0f}/s)"
        if self.total:
            share = min(self.done_bytes / self.total, 1.0)
            eta = (now - self.start) * (1 - share) / max(share, 1e-9)
            text += f", {100 * share:.1f}% read, ETA {eta / 60:.1f} min"
        log.info("prepare: %s", text)


def _txt_documents(path: str, unit: str, stats: ReadStats, on_error: Any, progress: _Progress):
    """Documents of a .txt file as lists of lines."""
    doc: list[str] = []
    for _, line in iter_lines(path, stats, on_error, max_line_bytes=_MAX_LINE):
        progress.done_bytes += len(line) + 1  # characters: an approximation of bytes
        if unit == "line":
            if line.strip():
                stats.rows += 1
                yield [line]
            continue
        if unit == "paragraph" and not line.strip():
            if doc:
                stats.rows += 1
                yield doc
            doc = []
            continue
        doc.append(line)
    if doc:
        stats.rows += 1
        yield doc


def documents(cfg: PrepareConfig, progress: _Progress, stats: list[ReadStats]):
    """Every input's documents, as lists of pieces (lines), in input order."""
    for path in cfg.input or []:
        s = ReadStats(str(path))
        stats.append(s)
        if detect_format(path) == "txt":
            yield from _txt_documents(str(path), cfg.unit, s, cfg.on_error, progress)
        else:
            for text in read_texts(path, cfg.on_error, s, "auto", cfg.columns):
                yield [text]


# ----------------------------------------------------------------------------- writing


class _Outputs:
    """Temporary files renamed into place by ``commit()`` (``abort()`` removes them)."""

    def __init__(self, folder: Path, names: list[str]) -> None:
        make_folder(folder)
        self.final = {n: folder / n for n in names}
        self.tmp = {n: temp_sibling(p) for n, p in self.final.items()}
        # closed by commit() / abort(), which prepare() always reaches
        self.files = {n: open(p, "w", encoding="utf-8") for n, p in self.tmp.items()}  # noqa: SIM115

    def write(self, name: str, text: str) -> None:
        self.files[name].write(text + "\n")

    def commit(self) -> None:
        for name, fh in self.files.items():
            fh.close()
            os.replace(self.tmp[name], self.final[name])

    def abort(self) -> None:
        for name, fh in self.files.items():
            with contextlib.suppress(OSError):  # a full disk fails the flush of the buffer too
                fh.close()
            self.tmp[name].unlink(missing_ok=True)


class _Sentences:
    """The per-sentence steps: length filters, token filter (batched), dedup, held-out split."""

    def __init__(self, cfg: PrepareConfig, out: _Outputs, counts: Counter) -> None:
        self.cfg, self.out, self.counts = cfg, out, counts
        self.split = make_splitter(cfg.split, cfg.language)
        self.exact = ExactDedup(cfg.exact_window) if cfg.exact_dup else None
        self.near = NearDedup(cfg.near_window, cfg.near_threshold) if cfg.near_dup else None
        self.tok = None
        if cfg.tokenizer:
            from transformers import AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(str(cfg.tokenizer))
        self.pending: list[str] = []

    def add(self, sentence: str) -> None:
        c, cfg = self.counts, self.cfg
        c["sentences"] += 1
        words = len(sentence.split())
        if len(sentence) < cfg.min_chars:
            c["too_short_chars"] += 1
        elif words < cfg.min_words:
            c["too_few_words"] += 1
        elif cfg.max_words and words > cfg.max_words:
            c["too_many_words"] += 1
        else:
            self.pending.append(sentence)
            if len(self.pending) >= 512:
                self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if self.tok is not None and batch:
            lengths = [len(ids) for ids in self.tok(batch, add_special_tokens=False)["input_ids"]]
        else:
            lengths = [None] * len(batch)
        for sentence, n in zip(batch, lengths, strict=True):
            self._keep(sentence, n)

    def _keep(self, sentence: str, n_tokens: int | None) -> None:
        c, cfg = self.counts, self.cfg
        if n_tokens is not None and n_tokens < cfg.min_tokens:
            c["too_few_tokens"] += 1
            return
        if n_tokens is not None and cfg.max_tokens and n_tokens > cfg.max_tokens:
            c["too_many_tokens"] += 1
            return
        key = normalize(sentence)
        if self.exact is not None and self.exact.seen(key):
            c["exact_duplicates"] += 1
            return
        if self.near is not None and self.near.seen(key):
            c["near_duplicates"] += 1
            return
        side = "validation" if held_out(key, cfg.validation, cfg.seed) else "train"
        self.out.write(f"{side}.txt", sentence)
        c[side] += 1


def _document(cfg, doc: list[str], out: _Outputs, sents: _Sentences, c: Counter, seen: set):
    """One document: language filter, documents output, then its sentences."""
    if cfg.lang_filter:
        import py3langid

        lang = py3langid.classify(" ".join(doc)[:2000])[0]
        if lang != cfg.language:
            c["documents_other_language"] += 1
            return
    if cfg.documents:
        text = normalize_space(" ".join(doc))
        h = text_hash(normalize(text))
        if len(text.split()) < cfg.documents_min_words:
            c["documents_too_short"] += 1
        elif h in seen:
            c["documents_duplicates"] += 1
        else:
            seen.add(h)
            side = "validation" if held_out(normalize(text), cfg.validation, cfg.seed) else "train"
            out.write("documents.txt" if side == "train" else "documents.validation.txt", text)
            c[f"documents_{side}"] += 1
    for sentence in split_stream(doc, sents.split):
        sents.add(sentence)


def output_folder(cfg: PrepareConfig) -> Path:
    shard = parse_shard(cfg.shard)
    out = Path(cfg.output)
    return out if shard is None else out.with_name(f"{out.name}.shard-{shard[0]}-of-{shard[1]}")


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run every step (see the module docstring); returns the report (also report.json)."""
    cfg.validate()
    shard = parse_shard(cfg.shard)
    folder = output_folder(cfg)
    names = ["train.txt"] + (["validation.txt"] if cfg.validation else [])
    if cfg.documents:
        names += ["documents.txt"] + (["documents.validation.txt"] if cfg.validation else [])
    sizes = [Path(p).stat().st_size for p in cfg.input or [] if Path(p).is_file()]
    progress = _Progress(sum(sizes) if len(sizes) == len(cfg.input or []) else None)
    counts: Counter = Counter(dict.fromkeys(STEPS, 0))  # every step reported, 0 included
    stats: list[ReadStats] = []
    kept = f"the files of an earlier run in {folder} are as they were (the new ones were removed)"
    with no_room(folder, None, kept):
        out = _Outputs(folder, names)
        try:
            sents = _Sentences(cfg, out, counts)
            seen_docs: set[int] = set()
            for i, doc in enumerate(documents(cfg, progress, stats)):
                if shard is not None and i % shard[1] != shard[0]:
                    continue
                counts["documents"] += 1
                _document(cfg, doc, out, sents, counts, seen_docs)
                progress.tick(counts)
            sents.flush()
            out.commit()
        except BaseException:
            out.abort()
            raise
    return _report(cfg, folder, counts, stats, time.monotonic() - progress.start)


def _report(cfg, folder: Path, counts: Counter, stats: list[ReadStats], seconds: float) -> dict:
    report = {
        "inputs": [s.summary() for s in stats],
        "counts": dict(counts),
        "seconds": round(seconds, 2),
        "sentences_per_s": round(counts["sentences"] / max(seconds, 1e-9), 1),
        "documents_per_s": round(counts["documents"] / max(seconds, 1e-9), 2),
        "near_duplicate_state_bound": (
            f"<= 2 x {cfg.near_window} LSH entries (~1.86 KB each at 64 permutations)"
            if cfg.near_dup
            else None
        ),
        "settings": asdict(cfg),
        "outputs": sorted(str(folder / n) for n in os.listdir(folder) if not n.startswith(".")),
    }
    atomic_write_text(folder / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def summary(report: dict) -> Iterator[str]:
    """The report as lines for the terminal."""
    c = report["counts"]
    yield f"documents: {c.get('documents', 0)}  sentences split: {c.get('sentences', 0)}"
    for key in sorted(c):
        if key not in ("documents", "sentences"):
            yield f"  {key}: {c[key]}"
    yield (
        f"{report['seconds']} s: {report['sentences_per_s']:,} sentences/s, "
        f"{report['documents_per_s']:,} documents/s"
    )
    yield from (f"wrote {p}" for p in report["outputs"])
