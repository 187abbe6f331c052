"""The held-out validation loss (``data.validation``): the objective's own training loss on rows
it never trains on, the one signal a run without any labels has.

The validation batches are built once, at set-up, on the main process: the held-out rows (or a
validation file's rows, read as the training data is) in file order, ``train.batch_size`` rows a
batch (the last one may be short), each with a fixed ``index`` and ``offset``, so every keyed draw
(MLM masks, TSDAE noise, DeCLUTR spans) is the same at every evaluation; every row counts
(``data.dedup_in_batch`` drops none here). :func:`validation_loss` runs the objective on them
without a gradient, in eval mode (dropout off), with torch's global generators forked and seeded
by a fixed key (embedding-level views such as ConSERT's draw the same each time) and restored
afterwards: the training run's randomness is untouched.

Under several processes the main process computes it alone while the others wait (as for the STS
evaluation): inside :func:`contrasent.core.distributed.local_only` the objectives' gathers and
reductions are identities, so the main process sees the whole global batch as one process would.
The number is therefore the one-process loss of each global batch, whatever the process count
(up to float rounding: there each view runs in passes of one process's share of rows).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from contrasent.core.distributed import local_only
from contrasent.core.errors import UserError
from contrasent.core.rng import keyed_rng
from contrasent.data.batches import Batch
from contrasent.data.registry import DataSpec, build_stream, data_kind
from contrasent.data.streams import make_batch
from contrasent.objectives.base import loss_record
from contrasent.objectives.functional import fp32

log = logging.getLogger(__name__)

__all__ = ["ValidationSet", "build_validation", "validation_loss"]

VALIDATION = 0x76616C  # key of the validation pass's seed, apart from the run's other draws


@dataclass
class ValidationSet:
    """The validation batches and how to score them (:func:`validation_loss`)."""

    batches: list[Batch]
    seed: int
    chunk: int = 0

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)

    def loss(self, module: nn.Module) -> float:
        return validation_loss(module, self.batches, self.seed, self.chunk)


def validation_spec(spec: DataSpec) -> DataSpec:
    """``spec`` reading the validation file instead (same kind and options), once, in order."""
    source = data_kind(spec.kind).source  # path, or data_config for a mixture
    return dataclasses.replace(
        spec,
        **{source: spec.validation},
        validation=None,
        epochs=1,
        shuffle_buffer=0,
        drop_last=False,
    )


def build_validation(
    spec: DataSpec, stream: Any, batch_size: int, seed: int, tokenizer: Any, chunk: int = 0
) -> ValidationSet:
    """The validation batches of the run whose training stream is ``stream`` (the one built from
    ``spec``): its held-out rows, or the rows of the file ``spec.validation``. One pass over the
    data; the count goes to the log."""
    from_file = isinstance(spec.validation, str)
    if from_file:
        stream = build_stream(validation_spec(spec), batch_size, seed, tokenizer)
    batches: list[Batch] = []
    held = read = 0
    for source in stream.sources:
        rows, total = source.validation_rows()
        held, read = held + len(rows), read + total
        for start in range(0, len(rows), batch_size):
            chunk_rows = rows[start : start + batch_size]
            batches.append(make_batch(stream.to_batch, chunk_rows, source.name, len(batches)))
    if not batches:
        raise UserError(
            f"data.validation {spec.validation}: no row was held out of the {read} training rows; "
            "give a larger fraction, or a row count with data.scan: true",
            "data.validation",
        )
    if from_file:
        log.info("validation: %d rows of %s (data.validation)", held, spec.validation)
    else:
        log.info(
            "validation: %d rows held out of %d (data.validation %s), never trained on",
            held,
            read,
            spec.validation,
        )
    return ValidationSet(batches, int(keyed_rng(seed, VALIDATION).integers(2**62)), chunk)


def _record(module: nn.Module, batch: Batch, chunk: int) -> dict[str, torch.Tensor]:
    """The objective's loss record; with ``chunk`` each view runs in passes of that many texts
    (the gradient cache's first pass: the memory of a training mini-batch, not the batch's)."""
    objective, encoder = module.objective, module.encoder
    if not chunk or chunk >= len(batch) or not objective.supports_gradient_cache:
        return module(batch)
    outputs = {}
    for view in objective.views(batch):
        parts = [
            fp32(
                objective.embed(
                    encoder,
                    view.slice(a, a + chunk),
                    encoder.tokenize(view.texts[a : a + chunk], max_length=module.max_length),
                )
            )
            for a in range(0, len(view), chunk)
        ]
        outputs[view.name] = torch.cat(parts)
    return loss_record(objective.loss(outputs, batch))


def validation_loss(module: nn.Module, batches: list[Batch], seed: int, chunk: int = 0) -> float:
    """The objective's training loss (``TrainModule.forward``'s ``loss``) on ``batches``, their
    mean weighted by rows: no gradient, eval mode (train mode restored), torch's global
    generators seeded with ``seed`` and restored afterwards, gathers local to this process."""
    device = next(module.parameters()).device
    devices = [device] if device.type == "cuda" else []
    was_training = module.training
    total, rows = 0.0, 0
    with torch.random.fork_rng(devices=devices), torch.no_grad(), local_only():
        torch.random.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        module.eval()
        try:
            for batch in batches:
                total += float(_record(module, batch, chunk)["loss"]) * len(batch)
                rows += len(batch)
        finally:
            module.train(was_training)
    return total / rows


def validation_for_run(cfg: Any, stream: Any, tokenizer: Any, world: int) -> ValidationSet | None:
    """A run's held-out batches (None without ``data.validation``, or with evaluation off: a
    warning then says no validation loss will be computed)."""
    d, e, t = cfg.data, cfg.eval, cfg.train
    if d.validation is None:
        return None
    if not (e.every_steps or e.at_start or e.at_end):
        log.warning(
            "data.validation is set but evaluation is off (eval.every_steps 0, at_start and "
            "at_end false): no validation loss will be computed"
        )
        return None
    # a global batch in passes of one process's share (or the gradient cache's mini-batch)
    chunk = t.mini_batch_size or (t.batch_size // world if world > 1 else 0)
    return build_validation(d, stream, t.batch_size, t.seed, tokenizer, chunk)
