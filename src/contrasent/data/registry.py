"""`DataSpec` (the data section of a training config), the registry of data kinds, and
`build_stream`, the loop's entry point.

A data kind is a registered builder (:func:`register_data_kind`, called for every kind by
:mod:`contrasent.data.kinds`, one module per kind): a name, the batch type it
yields (objectives declare the batch type they consume, and the loop checks the two agree before
the model loads), an optional typed options dataclass (``data.options`` in a recipe), and
``build(spec, options, batch_size, seed, tokenizer) -> BatchStream``. Built in: ``text``
(SentenceBatch), ``pairs`` and ``mixture`` (PairBatch), ``nli`` (SimCSE's (premise, entailment,
contradiction) triplets as a PairBatch), ``nli_pairs`` (every labelled pair: NLIBatch) and
``sts_texts`` (the unlabeled sentences of the STS sets: SentenceBatch), ``documents``
(DeCLUTR spans).

The loop calls ``build_stream(spec, batch_size, seed, tokenizer)`` on every process and gets the
same deterministic stream of GLOBAL batches everywhere (it slices each batch across processes
itself). All files are opened and checked here, before training starts: header names, column
indices, the first rows, and, with ``scan: true`` (default), every row, which also yields the
row counts behind `steps_per_epoch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contrasent.core.errors import UserError
from contrasent.core.options import build_options, suggest
from contrasent.data.readers import ReadStats
from contrasent.data.sources import is_remote
from contrasent.data.streams import BatchStream, EpochStream, RowSource, ToBatch, hold_out

__all__ = [
    "DATA_KINDS",
    "DataKind",
    "DataSpec",
    "build_stream",
    "epoch_stream",
    "register_data_kind",
]


@dataclass
class DataSpec:
    """Training data: what to read and how to shuffle and batch it."""

    kind: str = "text"
    """A registered data kind. text: one text a line (.txt/.txt.gz) -> SentenceBatch. pairs: a
    TSV/CSV/JSONL file of (anchor, positive[, negatives]) -> PairBatch. nli: SentEval SNLI-layout
    folder(s) -> (premise, entailment, contradiction) PairBatch. nli_pairs: the same folders ->
    every labelled (premise, hypothesis, label) pair, NLIBatch. sts_texts: a SentEval folder ->
    the unlabeled sentences of its 7 STS sets, SentenceBatch. mixture: the datasets of
    `data_config` mixed by weight -> PairBatch. Others: see `contrasent train --help`."""

    max_seq_length: int | None = None
    """Truncate training inputs to this many tokens (SimCSE: 32). Training only: evaluation and
    the saved model use model.max_seq_length (default: the base model's limit), as SimCSE
    truncates its training data but evaluates untruncated. None: the encoder's length."""

    options: dict[str, Any] | None = None
    """Options of the data kind itself (e.g. span sampling for documents); see its help."""

    path: str | list[str] | None = None
    """The file (text, pairs) or folder (nli); a list is read in order as one dataset. text and
    pairs also read .parquet files, datasets.save_to_disk folders (FOLDER[@split]) and Hugging
    Face datasets, streamed: hf:org/name[:config][@split] (pip install 'contrasent[datasets]')."""

    columns: dict[str, str | int | list[str | int]] | None = None
    """Pairs: role -> column, e.g. {"anchor": "sentence1", "positive": "sentence2",
    "negative": ["hard_neg"]}. Text: {"text": "body"} (default: a `text` column, the only
    column, or the first field). Names need a header row in TSV/CSV; integers ("0") index
    headerless TSV/CSV and JSON-list rows. None: positional (anchor, positive, negatives...)."""

    format: Literal["auto", "txt", "tsv", "csv", "jsonl", "parquet"] = "auto"
    """File format; auto: from the suffix (.txt, .tsv, .csv, .jsonl, each optionally .gz;
    .parquet) or a saved dataset folder / hf: id."""

    header: bool | None = None
    """Whether the first TSV/CSV line names the columns. None: yes iff `columns` uses names."""

    split: str = "train"
    """nli: which split's files to read (s1.<split>, s2.<split>, labels.<split>)."""

    data_config: str | None = None
    """mixture: a 1B-pairs style data_config.json (list of {name|path, weight, ...})."""

    data_dir: str | None = None
    """mixture: folder for the config's relative paths (default: the config file's folder)."""

    batch_from_one_dataset: bool = True
    """mixture: draw each batch from one dataset (in-domain negatives, batch.dataset set);
    false: draw each row's dataset by weight (all datasets must have equal negatives)."""

    shuffle_buffer: int = 100_000
    """Rows held for shuffling, per dataset. A file no larger than this is shuffled uniformly;
    0 or 1 keeps file order. nli is always fully shuffled (it is in memory) unless 0 or 1."""

    epochs: int | None = 1
    """Passes over the data; None: endless (the loop stops at its max_steps). For a mixture
    an epoch is (total rows // batch_size) batches, which needs scan or `lines` entries."""

    drop_last: bool = True
    """Drop each epoch's last, short batch (keeps every batch the full global size)."""

    dedup_in_batch: bool = False
    """Drop (and count) a row sharing a text with a row already in its batch, as the 1B-pairs
    project did: such a row would be a false in-batch negative. steps_per_epoch then counts
    rows before the drops."""

    on_error: Literal["raise", "skip"] = "raise"
    """Malformed rows and invalid UTF-8: raise (UserError naming file:line) or count and skip."""

    scan: bool = True
    """Read every file once before training: checks every row up front and counts rows for
    steps_per_epoch. Turn off for very large inputs: only headers and first rows are checked
    and steps_per_epoch is None (a mixture can still use its `lines` entries)."""

    validation: int | float | None | str = None
    """Held-out data for the validation loss, logged as `validation_loss` at every evaluation
    (usable as eval.metric): a file or folder read as the training data is (same kind, columns,
    format and options; a mixture: a data_config), or rows held out of the training data and
    never trained on: a fraction in (0, 1) such as 0.01, or a row count (needs scan). The
    held-out rows are a keyed draw per row: the same on every process and after a resume.
    None: no validation loss."""

    def check(self) -> None:
        """Raise UserError for inconsistent settings (before any file is opened)."""
        kind = data_kind(self.kind)
        need = kind.source
        if getattr(self, need) in (None, "", []):
            raise UserError(f"data.{need} is required for data.kind={self.kind!r}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise UserError(f"data.max_seq_length must be >= 1, got {self.max_seq_length}")
        if self.options and kind.options is None:
            raise UserError(f"data.options: data.kind {self.kind!r} takes no options")
        if kind.source == "data_config" and self.path:
            raise UserError(
                f"data.path is unused for a {self.kind}: list the files in data.data_config"
            )
        if kind.source != "data_config" and self.data_config:
            owners = " or ".join(repr(k.name) for k in DATA_KINDS.values() if k.source != "path")
            raise UserError(f"data.data_config is only for kind {owners}, not {self.kind!r}")
        if self.columns is not None and "columns" not in kind.fields:
            raise UserError(f"data.columns does not apply to data.kind={self.kind!r}")
        if self.shuffle_buffer < 0:
            raise UserError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"data.epochs must be >= 1 or null (endless), got {self.epochs}")
        self._check_validation()

    def _check_validation(self) -> None:
        v = self.validation
        if v is None or (isinstance(v, str) and v.strip()):
            return
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            bad = True
        elif isinstance(v, int):
            bad = v < 1
        elif isinstance(v, float):
            bad = not 0.0 < v < 1.0
        else:
            bad = True  # an empty text
        if bad:
            raise UserError(
                f"data.validation must be a fraction in (0, 1) of the training rows, a row "
                f"count >= 1 or a file, got {v!r}",
                "data.validation",
            )

    def check_paths(self) -> None:
        """The files and folders named here exist (a cheap check before the model loads);
        relative paths are resolved against the current folder, which the error names."""
        named = [("data.path", p) for p in self.paths]
        named += [("data.data_config", self.data_config)] if self.data_config else []
        named += [("data.data_dir", self.data_dir)] if self.data_dir else []
        named += [("data.validation", self.validation)] if isinstance(self.validation, str) else []
        for key, p in named:
            if is_remote(p):
                continue  # hf: ids and data passed from Python are checked when opened
            path = Path(p).expanduser()
            if not path.exists() and Path(str(p).rpartition("@")[0] or p).expanduser().is_dir():
                continue  # a saved dataset's FOLDER@split
            if not path.exists():
                where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
                raise UserError(f"{key} {p}: no such file or folder{where}", key)

    @property
    def paths(self) -> list[str]:
        if self.path is None:
            return []
        return [self.path] if isinstance(self.path, str) else list(self.path)


Build = Callable[[DataSpec, Any, int, int, Any], BatchStream]


@dataclass(frozen=True)
class DataKind:
    """A registered data kind: ``build(spec, options, batch_size, seed, tokenizer)``.

    ``source`` is the DataSpec field naming its input (``path``, or ``data_config`` for a
    mixture); ``fields`` the kind-specific DataSpec fields it reads (``columns``, ``split``): a
    recipe setting one the kind does not read is an error, and they enter the resume
    fingerprint. A kind's own settings belong in its ``options`` dataclass, not in DataSpec.
    """

    name: str
    batch_type: type
    build: Build
    options: type | None = None
    summary: str = ""
    source: Literal["path", "data_config"] = "path"
    fields: frozenset[str] = frozenset()


DATA_KINDS: dict[str, DataKind] = {}


def register_data_kind(kind: DataKind) -> DataKind:
    """Add a data kind under its name (one name, one kind)."""
    if DATA_KINDS.get(kind.name, kind) is not kind:
        raise ValueError(f"data kind {kind.name!r} is already registered")
    DATA_KINDS[kind.name] = kind
    return kind


def data_kind(name: str) -> DataKind:
    """The registered kind ``name``; UserError with the closest name otherwise."""
    if name not in DATA_KINDS:
        raise UserError(
            f"unknown data.kind {name!r}{suggest(name, list(DATA_KINDS))}; "
            f"known: {', '.join(sorted(DATA_KINDS))}",
            "data.kind",
        )
    return DATA_KINDS[name]


def data_options(spec: DataSpec) -> Any:
    """The kind's typed options from ``spec.options`` (None for kinds without options)."""
    kind = data_kind(spec.kind)
    if kind.options is None:
        return None
    return build_options(
        kind.options, spec.options, f"data.options (kind {spec.kind})", "data.options"
    )


def build_stream(spec: DataSpec, batch_size: int, seed: int, tokenizer: Any = None) -> BatchStream:
    """Open, check and (with spec.scan) count the data; return its global-batch stream.

    The stream is deterministic given (spec, batch_size, seed, file contents) and resumes
    exactly through ``state_dict()`` / ``load_state_dict()``. ``tokenizer`` is the encoder's
    (kinds that count tokens, e.g. span sampling, need it).
    """
    spec.check()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    kind = data_kind(spec.kind)
    return kind.build(spec, data_options(spec), batch_size, seed, tokenizer)


def fingerprint_of(spec: DataSpec, batch_size: int, seed: int) -> dict[str, Any]:
    """What must not change between a checkpoint and its resume for the stream to continue."""
    return {
        "kind": spec.kind,
        "path": spec.paths,
        "columns": spec.columns,
        "format": spec.format,
        "split": spec.split if "split" in data_kind(spec.kind).fields else None,
        "batch_size": batch_size,
        "seed": seed,
        "shuffle_buffer": spec.shuffle_buffer,
        "drop_last": spec.drop_last,
        "dedup_in_batch": spec.dedup_in_batch,
        **({"options": spec.options} if spec.options else {}),
        # absent when unset: checkpoints from before the option still resume
        **({"validation": spec.validation} if spec.validation is not None else {}),
    }


def epoch_stream(
    spec: DataSpec,
    batch_size: int,
    seed: int,
    read: tuple[RowSource, int | None, list[ReadStats]],
    to_batch: ToBatch,
) -> EpochStream:
    """The stream of a one-dataset kind: ``read`` is (source, row count or None, scan stats).
    Rows held out for validation (``spec.validation`` a fraction or count) are never batched."""
    source, rows, stats = read
    source.scanned = bool(stats)
    if spec.validation is not None and not isinstance(spec.validation, str):
        (held,) = hold_out([source], [rows], spec.validation)
        rows = None if rows is None or held is None else rows - held
    stream = EpochStream(
        source,
        batch_size,
        spec.epochs,
        spec.drop_last,
        spec.dedup_in_batch,
        fingerprint_of(spec, batch_size, seed),
        rows,
        to_batch,
    )
    stream.stats = stats
    return stream
