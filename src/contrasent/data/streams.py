"""Deterministic, exactly resumable streams of global batches.

Randomness is keyed, never carried: epoch `e` of dataset `k` is shuffled by a generator seeded
with ``(seed, k, e)``, and mixture step `s` draws its dataset(s) from ``(seed, MIX, s)``. A stream
position is therefore a few integers (see each ``state_dict``), and resuming re-seeds and
fast-forwards: it re-reads the current epoch of each file up to the saved row, without forming
batches. That costs at most one pass over each file, holds only the shuffle buffer in memory,
and yields exactly the batches an uninterrupted run would have produced.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from contrasent.core.errors import UserError
from contrasent.core.rng import keyed_rng
from contrasent.data.batches import Batch, PairBatch, SentenceBatch
from contrasent.data.holdout import HeldOut, held_counts, smallest
from contrasent.data.readers import ReadStats

log = logging.getLogger(__name__)

Row = str | tuple
#: rows of one batch (and the dataset name, for a mixture) -> the data kind's typed batch. A
#: to_batch that declares a keyword ``index`` also gets the global batch number, for randomness
#: keyed inside it (DeCLUTR's span draws: ``keyed_rng(seed, KEY, index, row)``); the stream sets
#: ``batch.index`` afterwards either way.
ToBatch = Callable[..., Batch]
MIX = 0x6D6978  # key of the mixture's dataset draws, apart from any dataset index
STATE_VERSION = 1


def buffer_shuffle(items: Iterable[Row], size: int, rng: np.random.Generator) -> Iterator[Row]:
    """Shuffle a stream with a buffer of `size` rows: a full uniform shuffle when the stream
    fits in the buffer, a local one otherwise. ``size <= 1`` keeps the order."""
    it = iter(items)
    if size <= 1:
        yield from it
        return
    buf: list[Row] = []
    for item in it:
        buf.append(item)
        if len(buf) >= size:
            break
    draws: Iterator[int] = iter(())
    for item in it:
        j = next(draws, None)
        if j is None:  # draw in blocks: one numpy call per 4096 rows, not per row
            draws = iter(rng.integers(0, size, 4096).tolist())
            j = next(draws)
        yield buf[j]
        buf[j] = item
    for j in rng.permutation(len(buf)).tolist():
        yield buf[j]


def takes_index(to_batch: ToBatch) -> bool:
    """Whether ``to_batch`` declares the keyword ``index`` (see :data:`ToBatch`)."""
    try:
        return "index" in inspect.signature(to_batch).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def make_batch(to_batch: ToBatch, rows: list[Row], dataset: str | None, index: int) -> Batch:
    """``to_batch(rows, dataset[, index=index])`` with ``batch.index`` set to ``index``."""
    batch = (
        to_batch(rows, dataset, index=index) if takes_index(to_batch) else to_batch(rows, dataset)
    )
    batch.index = index  # the global batch number (keys per-row randomness)
    return batch


def texts_of(row: Row) -> tuple[str, ...]:
    """The texts of a row (non-text fields such as an NLI label are not texts)."""
    return (row,) if isinstance(row, str) else tuple(t for t in row if isinstance(t, str))


def sentence_batch(rows: list[Row], dataset: str | None = None) -> SentenceBatch:
    """One text a row -> :class:`SentenceBatch`."""
    return SentenceBatch(texts=list(rows))  # type: ignore[arg-type]


def pair_batch(rows: list[Row], dataset: str | None = None) -> PairBatch:
    """``(anchor, positive, *negatives)`` rows (all of one width) -> :class:`PairBatch`."""
    width = len(rows[0])
    return PairBatch(
        anchors=[r[0] for r in rows],
        positives=[r[1] for r in rows],
        negatives=[[r[k] for r in rows] for k in range(2, width)],
        dataset=dataset,
    )


class RowSource:
    """One dataset that can be read again for every epoch, each epoch shuffled by its own key.

    Args:
        name: reported in logs and `PairBatch.dataset`.
        read: opens a fresh pass over the data, counting into the given ReadStats.
        shuffle_buffer: rows held for shuffling (<= 1: file order).
        seed, key: the epoch-`e` shuffle uses ``keyed_rng(seed, key, e)``.
    """

    def __init__(
        self,
        name: str,
        read: Callable[[ReadStats], Iterable[Row]],
        shuffle_buffer: int,
        seed: int,
        key: int,
    ) -> None:
        self.name, self.read, self.shuffle_buffer = name, read, shuffle_buffer
        self.seed, self.key = seed, key
        self.scanned = False  # a scan already reported the counts: the first epoch need not
        self.held: HeldOut | None = None  # rows held out for validation: never trained on

    def epoch(self, epoch: int) -> Iterator[Row]:
        stats = ReadStats(self.name)
        rng = keyed_rng(self.seed, self.key, epoch)
        rows = self.read(stats)
        if self.held is not None:
            rows = self.held.split(rows, held=False)
        yield from buffer_shuffle(rows, self.shuffle_buffer, rng)
        # The first pass's counts are news; later passes repeat them.
        stats.report(logging.INFO if epoch == 0 and not self.scanned else logging.DEBUG)
        if stats.rows == 0:
            raise UserError(f"{self.name}: no usable rows ({stats.summary()})")

    def validation_rows(self) -> tuple[list[Row], int]:
        """One pass in file order: the held-out rows (every row when none is held out, as in a
        validation file's dataset) and the number of rows read."""
        stats = ReadStats(self.name)
        rows: Iterable[Row] = self.read(stats)
        if self.held is not None:
            rows = self.held.split(rows, held=True)
        return list(rows), stats.rows


def hold_out(
    sources: list[RowSource], totals: list[int | None], validation: float | int
) -> list[int | None]:
    """Hold ``validation`` (a fraction or a row count, :mod:`contrasent.data.holdout`) out of
    each source, whose row counts are ``totals`` (None: unknown); returns the rows held out of
    each (None: drawn row by row, known after a pass)."""
    counts = held_counts(validation, totals)
    for source, total, n in zip(sources, totals, counts, strict=True):
        if n is None:
            source.held = HeldOut(source.seed, source.key, fraction=float(validation))
        else:
            none = np.zeros(0, dtype=np.int64)
            positions = smallest(source.seed, source.key, int(total or 0), n) if n else none
            source.held = HeldOut(source.seed, source.key, positions=positions)
    return counts


class BatchStream:
    """An iterator of global batches with ``state_dict()`` / ``load_state_dict()``.

    `steps_per_epoch` is the number of batches per epoch when it is known (None otherwise);
    `stats` holds the counts of the scanning pass, when one was made. The state counts batches
    returned by ``next()``: a loop that prefetches must save the state of what it consumed.
    """

    steps_per_epoch: int | None = None
    total_steps: int | None = None
    """Batches the whole stream yields, when finite and known (for the LR schedule)."""
    sources: list[RowSource]
    """The datasets it reads (one, or one per dataset of a mixture)."""
    to_batch: ToBatch

    def __init__(self, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = fingerprint
        self.stats: list[ReadStats] = []
        self.step = 0
        self._gen: Iterator[Batch] | None = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self._gen is None:
            self._gen = self._generate()
        return next(self._gen)

    def _generate(self) -> Iterator[Batch]:
        raise NotImplementedError

    def _position(self) -> dict[str, Any]:
        raise NotImplementedError

    def _restore(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Plain ints, lists and strings (JSON- and torch.save-friendly)."""
        return {"version": STATE_VERSION, "fingerprint": dict(self.fingerprint), **self._position()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the batches the saved stream had returned."""
        if state.get("version") != STATE_VERSION:
            raise UserError(f"data state version {state.get('version')}, expected {STATE_VERSION}")
        saved = state.get("fingerprint", {})
        diff = sorted(
            k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k)
        )
        memory = [p for p in saved.get("path") or [] if str(p).startswith("memory:")]
        if "path" in diff and memory:
            raise UserError(
                "cannot resume: the data passed from Python is not the data of the checkpoint "
                f"(fingerprint {memory[0]}, now {self.fingerprint.get('path')}); pass the same "
                "data again, or start a new run"
            )
        if diff:
            detail = "; ".join(
                f"{k}: saved {saved.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in diff
            )
            raise UserError(
                f"cannot resume the data stream exactly: the data setup changed ({detail}); "
                "restore the original settings or start a new run"
            )
        if self._gen is not None:
            self._gen.close()
            self._gen = None
        self._restore(state)


def batched(
    rows: Iterable[Row], size: int, drop_last: bool, dedup: bool, on_dup: Callable[[], None]
) -> Iterator[list[Row]]:
    """Group rows into lists of `size`; with `dedup`, a row sharing a text with a row already in
    the batch is dropped (counted through `on_dup`), since it would be a false negative."""
    batch: list[Row] = []
    seen: set[str] = set()
    for row in rows:
        if dedup:
            texts = texts_of(row)
            if any(t in seen for t in texts):
                on_dup()
                continue
            seen.update(texts)
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch, seen = [], set()
    if batch and not drop_last:
        yield batch


class EpochStream(BatchStream):
    """Batches over one dataset, epoch after epoch (`epochs` None: endless).

    Each epoch is shuffled on its own key and batched on its own: with ``drop_last=False`` its
    last batch may be short. State: ``{"epoch", "batch_in_epoch", "step"}``.
    """

    def __init__(
        self,
        source: RowSource,
        batch_size: int,
        epochs: int | None,
        drop_last: bool,
        dedup: bool,
        fingerprint: dict[str, Any],
        num_rows: int | None = None,
        to_batch: ToBatch = sentence_batch,
    ) -> None:
        super().__init__(fingerprint)
        self.source, self.batch_size, self.epochs = source, batch_size, epochs
        self.sources = [source]
        self.to_batch = to_batch
        self.drop_last, self.dedup = drop_last, dedup
        if num_rows is not None:
            per = num_rows // batch_size if drop_last else math.ceil(num_rows / batch_size)
            self.steps_per_epoch = per
            if per == 0:
                raise UserError(
                    f"{source.name}: {num_rows} usable rows, fewer than one batch of {batch_size}"
                )
        if self.steps_per_epoch is not None and epochs is not None:
            self.total_steps = self.steps_per_epoch * epochs
        self.epoch, self.batch_in_epoch = 0, 0
        self.duplicates = 0

    def _count_dup(self) -> None:
        self.duplicates += 1

    def _generate(self) -> Iterator[Batch]:
        epoch, skip = self.epoch, self.batch_in_epoch
        while self.epochs is None or epoch < self.epochs:
            self.duplicates = 0
            rows = self.source.epoch(epoch)
            made = 0
            for made, rows_ in enumerate(
                batched(rows, self.batch_size, self.drop_last, self.dedup, self._count_dup), 1
            ):
                if made <= skip:
                    continue  # fast-forward after a resume
                batch = make_batch(self.to_batch, rows_, self.source.name, self.step)
                self.epoch, self.batch_in_epoch, self.step = epoch, made, self.step + 1
                yield batch
            if made < skip:
                raise UserError(
                    f"{self.source.name}: epoch {epoch} has {made} batches but the saved state "
                    f"is at batch {skip}: the data changed since the state was saved"
                )
            if made == 0:
                raise UserError(
                    f"{self.source.name}: not one batch of {self.batch_size} in an epoch "
                    "(too few usable rows; lower batch_size or set drop_last: false)"
                )
            if self.duplicates:
                log.info(
                    "%s epoch %d: skipped %d rows sharing a text with their batch (dedup_in_batch)",
                    self.source.name,
                    epoch,
                    self.duplicates,
                )
            epoch, skip = epoch + 1, 0
            self.epoch, self.batch_in_epoch = epoch, 0

    def _position(self) -> dict[str, Any]:
        epoch, k = self.epoch, self.batch_in_epoch
        if not self.dedup and self.steps_per_epoch is not None and k >= self.steps_per_epoch:
            epoch, k = epoch + 1, 0  # the epoch is done: resuming need not re-read it
        return {"epoch": epoch, "batch_in_epoch": k, "step": self.step}

    def _restore(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.step = int(state["step"])


class _Cursor:
    """Endless reading position in one mixture dataset: (epoch, rows taken in that epoch)."""

    def __init__(self, source: RowSource) -> None:
        self.source = source
        self.epoch, self.pos = 0, 0
        self._it: Iterator[Row] | None = None
        self.duplicates = 0

    def take(self) -> Row:
        for _ in range(2):
            if self._it is None:
                self._it = self.source.epoch(self.epoch)
                for _ in range(self.pos):  # fast-forward after a resume
                    if next(self._it, None) is None:
                        raise UserError(
                            f"{self.source.name}: epoch {self.epoch} ends before row {self.pos} "
                            "of the saved state: the data changed since the state was saved"
                        )
            row = next(self._it, None)
            if row is not None:
                self.pos += 1
                return row
            if self.duplicates:
                log.info(
                    "%s epoch %d: skipped %d rows sharing a text with their batch",
                    self.source.name,
                    self.epoch,
                    self.duplicates,
                )
            self.epoch, self.pos, self._it, self.duplicates = self.epoch + 1, 0, None, 0
        raise UserError(f"{self.source.name}: no usable rows")

    def reset(self, epoch: int, pos: int) -> None:
        if self._it is not None:
            self._it.close()  # type: ignore[attr-defined]
        self.epoch, self.pos, self._it = epoch, pos, None


class MixtureStream(BatchStream):
    """Endless batches mixing datasets by integer weights (probability weight / sum).

    ``one_dataset=True``: each batch comes from one dataset drawn by weight (in-domain
    negatives; `PairBatch.dataset` names it). Otherwise each row's dataset is drawn by weight.
    `max_steps` bounds the stream (None: endless). State: ``{"step", "datasets": [[epoch,
    rows taken], ...]}``.
    """

    def __init__(
        self,
        sources: list[RowSource],
        weights: list[int],
        batch_size: int,
        one_dataset: bool,
        dedup: bool,
        seed: int,
        fingerprint: dict[str, Any],
        max_steps: int | None = None,
        to_batch: ToBatch = pair_batch,
    ) -> None:
        super().__init__(fingerprint)
        self.to_batch = to_batch
        self.cursors = [_Cursor(s) for s in sources]
        self.sources = list(sources)
        total = float(sum(weights))
        self.p = np.array([w / total for w in weights])
        self.batch_size, self.one_dataset, self.dedup = batch_size, one_dataset, dedup
        self.seed, self.max_steps = seed, max_steps
        self.total_steps = max_steps

    def _draw(self, cursor: _Cursor, seen: set[str]) -> Row:
        while True:
            row = cursor.take()
            texts = texts_of(row)
            if not self.dedup or not any(t in seen for t in texts):
                seen.update(texts)
                return row
            cursor.duplicates += 1

    def _generate(self) -> Iterator[Batch]:
        while self.max_steps is None or self.step < self.max_steps:
            rng = keyed_rng(self.seed, MIX, self.step)
            seen: set[str] = set()
            if self.one_dataset:
                cursor = self.cursors[int(rng.choice(len(self.cursors), p=self.p))]
                rows = [self._draw(cursor, seen) for _ in range(self.batch_size)]
                name: str | None = cursor.source.name
            else:
                picks = rng.choice(len(self.cursors), size=self.batch_size, p=self.p).tolist()
                rows = [self._draw(self.cursors[k], seen) for k in picks]
                names = {self.cursors[k].source.name for k in picks}
                name = names.pop() if len(names) == 1 else None
            batch = make_batch(self.to_batch, rows, name, self.step)
            self.step += 1
            yield batch

    def dataset_counts(self) -> dict[str, int]:
        """Rows taken from each dataset so far in its current epoch (for reports and tests)."""
        return {c.source.name: c.pos for c in self.cursors}

    def _position(self) -> dict[str, Any]:
        return {"step": self.step, "datasets": [[c.epoch, c.pos] for c in self.cursors]}

    def _restore(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        positions = state["datasets"]
        if len(positions) != len(self.cursors):
            raise UserError(
                f"data state has {len(positions)} datasets, the mixture {len(self.cursors)}"
            )
        for cursor, (epoch, pos) in zip(self.cursors, positions, strict=True):
            cursor.reset(int(epoch), int(pos))
