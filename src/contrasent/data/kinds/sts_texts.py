"""Data kind ``sts_texts``: the unlabeled sentences of the seven STS evaluation sets
(STS12-16, STS-B, SICK-R), ConSERT's transductive setting (Yan et al., 2021, section 4.1).

Read from the same SentEval ``downstream`` folder as evaluation, with evaluation's readers
(:mod:`contrasent.data.senteval`: same whitespace normalisation), both sentences of every pair, no
score used. ``data.path`` is that folder; ``data.options``:

* ``splits: test`` (default): the seven TEST sets: every pair of the STS12-16 input files (the
  STS15/16 pairs without a gold score included: they are in the test files), STS-B test, SICK
  test_annotated;
* ``splits: all``: also STS-B train + dev and SICK train + trial, the reference's set
  (``data_utils.load_datasets`` with ``use_all_unsupervised_texts``);
* ``dedup: true`` (default): each distinct sentence once, in order of first appearance;
  ``false``: every sentence of every pair. ``splits: all, dedup: false`` is the reference's list:
  89,192 lines on ../shared/data/senteval (47,421 distinct after evaluation's whitespace
  normalisation); ``splits: test`` has 64,694 lines, 44,024 distinct (the default).

The STS-B dev pairs used for model selection are among the training texts with ``splits: all``
(as in the reference): the setting is transductive by design, the scores are never read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contrasent.core.errors import UserError
from contrasent.data.batches import SentenceBatch
from contrasent.data.readers import ReadStats
from contrasent.data.registry import DataKind, epoch_stream
from contrasent.data.senteval import (
    STS_YEARS,
    read_sick,
    read_sts_inputs,
    read_stsb,
    resolve_data_dir,
)
from contrasent.data.streams import RowSource, sentence_batch

SPLITS = {"test": ("test",), "all": ("train", "dev", "test")}


@dataclass
class STSTextsOptions:
    """Options of ``sts_texts``.

    Attributes:
        splits: test: the seven STS test sets (STS12-16 input files, STS-B test, SICK-R test);
            all: also STS-B train/dev and SICK train/trial, as the ConSERT reference.
        dedup: Keep each distinct sentence once; false: every sentence of every pair (with
            splits all: the reference's 89,192 lines).
    """

    splits: Literal["test", "all"] = "test"
    dedup: bool = True

    def __post_init__(self) -> None:
        if self.splits not in SPLITS:
            raise ValueError(f"splits must be one of {sorted(SPLITS)}, got {self.splits!r}")


def sts_pairs(root: Path, splits: str = "test") -> dict[str, list[tuple[str, str]]]:
    """Source name -> its sentence pairs, in evaluation's task order (no scores)."""

    out: dict[str, list[tuple[str, str]]] = {}
    for task, subsets in STS_YEARS.items():
        out[task] = [p for sub in subsets for p in read_sts_inputs(root, task, sub)]
    for task, reader in (("STSBenchmark", read_stsb), ("SICKRelatedness", read_sick)):
        for split in SPLITS[splits]:
            pairs = reader(root, split)
            out[f"{task}.{split}"] = list(zip(pairs.s1, pairs.s2, strict=True))
    return out


def sts_texts(root: str | Path, splits: str = "test", dedup: bool = True) -> list[str]:
    """The sentences of :func:`sts_pairs` (both of each pair), optionally deduplicated."""

    folder = resolve_data_dir(root)
    texts = [t for pairs in sts_pairs(folder, splits).values() for pair in pairs for t in pair]
    return list(dict.fromkeys(texts)) if dedup else texts


def build_sts_texts(spec, options: STSTextsOptions, batch_size: int, seed: int, _tokenizer):
    """The ``sts_texts`` stream: the texts in memory, fully shuffled each epoch (keyed)."""
    if len(spec.paths) != 1:
        raise UserError(f"data.path: sts_texts reads ONE SentEval folder, got {spec.paths}")
    texts = sts_texts(spec.paths[0], options.splits, options.dedup)
    stats = ReadStats(
        f"{spec.paths[0]} (STS texts, splits {options.splits}, dedup {options.dedup})"
    )
    stats.lines = stats.rows = len(texts)
    stats.report()

    def read(s: ReadStats) -> Iterator[str]:
        s.rows = s.lines = len(texts)
        return iter(texts)

    buffer = len(texts) if spec.shuffle_buffer > 1 else 0  # in memory: shuffle it all
    source = RowSource(stats.path, read, buffer, seed, 0)
    return epoch_stream(spec, batch_size, seed, (source, len(texts), [stats]), sentence_batch)


KIND = DataKind(
    "sts_texts",
    SentenceBatch,
    build_sts_texts,
    options=STSTextsOptions,
    summary="the unlabeled sentences of the 7 STS sets in a SentEval folder (ConSERT)",
)
