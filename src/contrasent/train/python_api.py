"""``contrasent.train(config, data=...)``: training from Python on data as the user holds it.

``data`` may be a list of strings (texts), a list of tuples ``(anchor, positive[, negatives])``
or of dicts, a ``datasets.Dataset`` / ``IterableDataset`` (what sentence-transformers' trainer
takes: one column = texts; several = anchor, positive, negatives in column order, as there), or
a path / ``hf:`` id (read like ``data.path``). In-memory data is registered under
``memory:<fingerprint>`` (:mod:`contrasent.data.sources`), so a checkpoint records WHICH data it
was trained on: resuming with the same data continues exactly, different data is one error.

``eval_tasks`` takes own-data evaluation tasks the same way: ``{"name": (KIND, data)}`` with
rows, columns or a ``datasets.Dataset`` (file specs and built-in names too); they become
``eval.tasks`` entries ``name=KIND:memory:<fingerprint>`` (:mod:`contrasent.eval.tasks`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contrasent.core.errors import UserError
from contrasent.data.sources import HF_PREFIX, register_memory
from contrasent.eval.tasks import python_task_specs
from contrasent.train.config import TrainConfig, as_train_config

#: kinds whose rows a caller's data can stand in for (others keep their kind and read the path)
_INFERRED = ("text", "pairs")


def load_config(config: Any) -> TrainConfig:
    """A TrainConfig from itself, a mapping or a YAML recipe path (paths inside may be Paths)."""
    if isinstance(config, (str, os.PathLike)):
        import yaml

        p = Path(config)
        if not p.is_file():
            raise UserError(f"recipe {config} not found")
        config = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if isinstance(config, TrainConfig):  # rebuilt so pathlib.Path values become text
        config = dataclasses.asdict(config)
    return as_train_config(config)


def _columns_of(first: Any, names: list[str]) -> tuple[str, dict | None]:
    """(kind, columns) for records whose columns are ``names`` (sentence-transformers' rule)."""
    if len(names) == 1 or "text" in names and "anchor" not in names:
        return "text", {"text": "text" if "text" in names else names[0]}
    if "anchor" in names and "positive" in names:
        negs = [n for n in names if n.startswith("negative")]
        return "pairs", {"anchor": "anchor", "positive": "positive", "negative": negs}
    if len(names) < 2:
        raise UserError(f"data: cannot tell texts or pairs from the columns {names}")
    return "pairs", {"anchor": names[0], "positive": names[1], "negative": names[2:]}


def describe(data: Any) -> tuple[str, str, dict | None]:
    """(data.path, kind, columns) for ``data`` (see the module docstring)."""
    if isinstance(data, (str, os.PathLike)):
        text = os.fspath(data)
        if not text.startswith(HF_PREFIX) and not Path(text.rpartition("@")[0] or text).exists():
            raise UserError(f"data: {text}: no such file or folder")
        return text, "", None
    names = getattr(data, "column_names", None)
    if names is None and isinstance(data, Sequence):
        if not data:
            raise UserError("data: the list is empty")
        first = data[0]
        if isinstance(first, str):
            return register_memory(data), "text", None
        if isinstance(first, (tuple, list)):
            return register_memory([tuple(r) for r in data]), "pairs", None
        if isinstance(first, Mapping):
            kind, columns = _columns_of(first, list(first))
            return register_memory(data), kind, columns
        raise UserError(f"data: expected texts, tuples or dicts, got {type(first).__name__}")
    if names is None and not hasattr(data, "__iter__"):
        raise UserError(f"data: cannot train on a {type(data).__name__}")
    if not names:  # a streamed dataset that does not know its columns yet
        first = next(iter(data), None)
        names = list(first) if isinstance(first, Mapping) else []
    kind, columns = _columns_of(None, list(names))
    return register_memory(data), kind, columns


def train(
    config: Any,
    data: Any = None,
    *,
    validation: Any = None,
    eval_tasks: Any = None,
    objective: Any = None,
    callbacks: Sequence[Any] = (),
) -> Any:
    """Train as ``config`` (a TrainConfig, mapping or YAML path) says, on ``data`` when given.

    ``validation``: held-out data in the same forms (or a fraction / row count, as
    ``data.validation``). ``eval_tasks``: replaces ``eval.tasks``: a mapping ``name -> (KIND,
    data)`` (or a file spec), or a list of spec strings and such mappings; the data is checked
    before the model loads. Returns the :class:`~contrasent.train.result.TrainResult`.
    The config's ``data.columns`` wins over the inferred mapping.
    """
    from contrasent.train.loop import train as run

    cfg = load_config(config)
    if data is not None:
        path, kind, columns = describe(data)
        spec = cfg.data
        if kind and spec.kind in _INFERRED:
            spec.kind = kind
        spec.path = path
        if spec.columns is None and columns is not None:
            spec.columns = {k: v for k, v in columns.items() if v != []}
    if validation is not None:
        if isinstance(validation, (int, float)) and not isinstance(validation, bool):
            cfg.data.validation = validation
        else:
            cfg.data.validation = describe(validation)[0]
    if eval_tasks is not None:
        cfg.eval.tasks = python_task_specs(eval_tasks)
    return run(cfg, objective=objective, callbacks=callbacks)
