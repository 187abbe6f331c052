"""Knowledge distillation into a (smaller) student: ``distill_mse`` (Reimers & Gurevych, 2020,
"Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation", EMNLP) and
``distill_margin_mse`` (Hofstätter et al., 2020, "Improving Efficient Neural Ranking Models with
Cross-Architecture Knowledge Distillation").

The teacher is a frozen encoder (``teacher``: a model folder or hub id) that embeds the batch's
texts inside ``loss`` (no gradient, eval mode), or, for ``distill_mse`` on ``text_lines`` data,
its precomputed embeddings (``teacher_embeddings``: the .npy `contrasent embed` wrote for the
training file, shards merged by `embed merge`; row i = line i, looked up by each row's line
number, memory-mapped): no view of it goes through the student, so the
gradient cache and several processes work unchanged (each process regresses its own rows; equal
slices average to the global mean). It is kept outside the module tree: never trained, never in
the optimizer or a checkpoint, never saved.

``distill_mse`` on ``text`` data: MSE(student(x), teacher(x)); on ``pairs`` data (parallel
sentences: source, translation): MSE(student(source), teacher(source)) and MSE(student(translation),
teacher(source)), averaged (sentence-transformers' ``MSELoss`` with one teacher embedding for both
columns, its multilingual recipe). When the dimensions differ, a trained projection (linear,
student -> teacher; ``MSELoss(projection_dim=...)``) maps the student first; it is a training head,
not saved, unless ``save_projection``: then it is a Dense head of the encoder itself (after
pooling, before normalisation), trained as such and saved as a sentence-transformers ``Dense``
module, so the saved student embeds in the teacher's space wherever it is loaded. ``distill_margin_mse`` on (query, positive, negative...) rows: MSE between the
student's and the teacher's dot-product margins ``q.p - q.n`` (``MarginMSELoss``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from contrasent.core.errors import UserError
from contrasent.data.batches import Batch, NumberedSentenceBatch, PairBatch, SentenceBatch
from contrasent.objectives.base import LossPart, Objective, Parts, View

log = logging.getLogger(__name__)


def mse_distill(students: list[Tensor], teachers: list[Tensor]) -> Tensor:
    """Mean over columns of the element-wise MSE between student and teacher embeddings."""
    return torch.stack(
        [nn.functional.mse_loss(s, t) for s, t in zip(students, teachers, strict=True)]
    ).mean()


def margin_mse(q: Tensor, p: Tensor, negatives: list[Tensor], margins: Tensor) -> Tensor:
    """MSE between the student's margins ``q.p - q.n_k`` ``[B, K]`` and ``margins`` ``[B, K]``."""
    pos = (q * p).sum(-1)
    pred = torch.stack([pos - (q * n).sum(-1) for n in negatives], dim=1)
    return nn.functional.mse_loss(pred, margins)


def open_table(path: str) -> np.ndarray:
    """The teacher_embeddings .npy, memory-mapped; a missing/unreadable file is one line."""
    try:
        table = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"objective.teacher_embeddings {path}: cannot read a .npy ({e})") from None
    if table.ndim != 2:
        raise UserError(
            f"objective.teacher_embeddings {path}: shape {table.shape}, need [rows, dim]"
        )
    return table


def check_rows(path: str, rows: int, batch: Batch) -> None:
    """teacher_embeddings need the rows' line numbers, and one row per line of the file."""
    if not isinstance(batch, NumberedSentenceBatch):
        raise UserError(
            "objective.teacher_embeddings: the rows' line numbers are needed: use data.kind "
            "text_lines (one text a line, the file that `contrasent embed` embedded)"
        )
    lines = batch.source_lines
    if lines is None and batch.lines:
        lines, rows = (None, rows) if max(batch.lines) < rows else (max(batch.lines) + 1, rows)
    if lines is not None and lines != rows:
        raise UserError(
            f"objective.teacher_embeddings {path} has {rows} rows but {batch.source} has "
            f"{lines}{' or more' if batch.source_lines is None else ''} lines; row i must embed "
            f"line i: `contrasent embed --input {batch.source}` (shards merged by `embed merge`)"
        )


@dataclass
class DistillConfig:
    """Options of distillation from a frozen teacher.

    Attributes:
        teacher: The teacher: a model folder (sentence-transformers or Hugging Face) or hub id;
            it embeds as saved (its pooling and normalisation).
        teacher_embeddings: Instead of a teacher: its embeddings of the training file, a .npy
            written by `contrasent embed --input FILE` (shards merged by `embed merge`), row i =
            line i; distill_mse with data.kind text_lines (rows carry their line numbers).
            When given, the teacher model is not loaded (``teacher`` only names it).
        teacher_batch_size: Texts per teacher forward pass.
        projection: Train a linear map student -> teacher dimension when they differ ("auto");
            false: differing dimensions are an error.
        save_projection: Keep that projection in the saved model: a sentence-transformers Dense
            module after pooling (normalisation, if any, after it), trained in place, so the
            student loads (here and in sentence-transformers) embedding in the teacher's
            dimension; false: a training head only, the saved student keeps its own dimension.
    """

    teacher: str = ""
    teacher_embeddings: str | None = None
    teacher_batch_size: int = 128
    projection: bool | str = "auto"
    save_projection: bool = False

    def __post_init__(self) -> None:
        if not self.teacher and not self.teacher_embeddings:
            raise ValueError(
                "give teacher (a model folder or hub id) or teacher_embeddings (a .npy from "
                "`contrasent embed`)"
            )
        if self.teacher_batch_size < 1:
            raise ValueError(f"teacher_batch_size must be >= 1, got {self.teacher_batch_size}")
        if self.projection not in (True, False, "auto"):
            raise ValueError(f"projection must be true, false or 'auto', got {self.projection!r}")


class _Distill(Objective):
    """The frozen teacher (outside the module tree) and the optional projection head."""

    citation = """@inproceedings{reimers2020multilingual,
  title = {Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation},
  author = {Reimers, Nils and Gurevych, Iryna},
  booktitle = {Empirical Methods in Natural Language Processing (EMNLP)},
  year = {2020}
}"""
    Config = DistillConfig
    matryoshka = False  # the targets have the teacher's full width

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._teacher: list[Any] = []  # a list: nn.Module would register (and train) it
        self.table: np.ndarray | None = None  # teacher_embeddings, memory-mapped
        self.projection: nn.Module | None = None

    def setup(self, encoder: Any) -> None:
        if self.config.teacher_embeddings:
            self.table = open_table(self.config.teacher_embeddings)
            t = int(self.table.shape[1])
        else:
            from contrasent.model.encoder import Encoder

            teacher = Encoder.from_pretrained(self.config.teacher, device=encoder.device)
            teacher.eval().requires_grad_(False)
            self._teacher = [teacher]
            t = teacher.hidden_size
        s = encoder.hidden_size
        if s != t and self.config.projection is False:
            raise UserError(
                f"objective.teacher embeds in {t} dimensions, the student in {s}: set "
                "objective.projection auto (a trained linear map) or pick matching models",
                "objective.projection",
            )
        if s != t and self.config.save_projection:
            from contrasent.model.st_layout import DenseHead

            head = DenseHead(nn.Linear(s, t), nn.Identity()).to(encoder.device)
            encoder.dense.append(head)  # the encoder's own head: trained, checkpointed, saved
            log.info("distillation: a trained projection %d -> %d, saved as a Dense module", s, t)
        elif s != t and self.config.projection is not False:
            self.projection = nn.Linear(s, t).to(encoder.device)
            log.info("distillation: a trained projection %d -> %d (not saved)", s, t)

    def table_rows(self, batch: NumberedSentenceBatch, like: Tensor) -> Tensor:
        """The precomputed teacher embeddings of the batch's rows (by line number)."""
        lines = np.asarray(batch.lines, np.int64)
        order = np.argsort(lines, kind="stable")  # a memory map reads forward
        rows = np.empty((len(lines), self.table.shape[1]), np.float32)
        rows[order] = self.table[lines[order]]
        return torch.from_numpy(rows).to(device=like.device)

    def teacher_embed(self, texts: list[str], like: Tensor) -> Tensor:
        if not self._teacher:
            raise RuntimeError(f"{type(self).__name__}.setup(encoder) must run first (teacher)")
        emb = self._teacher[0].encode(texts, batch_size=self.config.teacher_batch_size,
                                      show_progress=False)  # fmt: skip
        return torch.from_numpy(emb).to(device=like.device, dtype=torch.float32)

    def student(self, x: Tensor) -> Tensor:
        x = x.float()
        return self.projection(x) if self.projection is not None else x


class DistillMSE(_Distill):
    """Student embeddings regress a frozen teacher's (MSE): monolingual on ``text`` data, or the
    multilingual recipe on ``pairs`` (source, translation) data, both mapped to the teacher's
    embedding of the source."""

    name = "distill_mse"
    method = "knowledge distillation (MSE to a teacher's embeddings)"
    batch_type = Batch  # SentenceBatch (text) or PairBatch (parallel pairs)

    def views(self, batch: Batch) -> list[View]:
        if self.table is not None:
            check_rows(self.config.teacher_embeddings, len(self.table), batch)
        if isinstance(batch, SentenceBatch):
            return [View("text", batch.texts)]
        if isinstance(batch, PairBatch):
            return [View("source", batch.anchors), View("translation", batch.positives)]
        raise UserError(f"distill_mse reads text or pairs data, not {type(batch).__name__}")

    def loss(self, outputs: dict[str, Tensor], batch: Batch) -> Parts:
        first = next(iter(outputs.values()))
        sources = batch.texts if isinstance(batch, SentenceBatch) else batch.anchors
        if self.table is not None:
            target = self.table_rows(batch, first)
        else:
            target = self.teacher_embed(list(sources), first)
        students = [self.student(x) for x in outputs.values()]
        return {"mse": LossPart(mse_distill(students, [target] * len(students)))}


class DistillMarginMSE(_Distill):
    """The student's dot-product margins q.p - q.n regress the frozen teacher's (MarginMSE) on
    (query, positive, negative...) rows (``pairs`` data with negative columns)."""

    name = "distill_margin_mse"
    method = "knowledge distillation (MarginMSE)"
    batch_type = PairBatch

    def views(self, batch: PairBatch) -> list[View]:
        if self.table is not None:
            raise UserError("objective.teacher_embeddings: distill_margin_mse scores with a "
                            "teacher model; give objective.teacher")  # fmt: skip
        if not batch.negatives:
            raise UserError("distill_margin_mse needs (query, positive, negative) rows: give "
                            "pairs data with a negative column")  # fmt: skip
        negatives = [View(f"negative_{k}", col) for k, col in enumerate(batch.negatives)]
        return [View("query", batch.anchors), View("positive", batch.positives), *negatives]

    def loss(self, outputs: dict[str, Tensor], batch: PairBatch) -> Parts:
        q = outputs["query"]
        t = [
            self.teacher_embed(list(c), q)
            for c in (batch.anchors, batch.positives, *batch.negatives)
        ]
        with torch.no_grad():
            margins = torch.stack([(t[0] * t[1]).sum(-1) - (t[0] * n).sum(-1) for n in t[2:]], 1)
        negs = [self.student(outputs[f"negative_{k}"]) for k in range(len(batch.negatives))]
        value = margin_mse(self.student(q), self.student(outputs["positive"]), negs, margins)
        return {"margin_mse": LossPart(value)}
