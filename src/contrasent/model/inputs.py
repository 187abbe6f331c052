"""What ``encode`` does to its input before the model runs, shared by the torch Encoder and the
ONNX one: input checks, the unpadded, longest-first tokenization and the numpy padding of each
batch (cheaper than ``tokenizer.pad``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from contrasent.core.errors import UserError


def checked_texts(texts: Any, batch_size: int) -> list[str]:
    """``encode``'s input as a list of str (a single string is one text); UserError otherwise."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise UserError(f"encode: text {bad} is {type(texts[bad]).__name__}, not str")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    return texts


def tokenize_longest_first(
    model: Any, texts: list[str], stats: dict[str, int] | None
) -> tuple[Any, np.ndarray]:
    """``encode``'s tokenization for ``model`` (an Encoder or OnnxEncoder: ``tokenizer``,
    ``max_seq_length``, ``do_lower_case``): unpadded ids, texts cut at the length counted into
    ``stats["truncated"]``, and the longest-first order that batches with little padding."""
    if model.do_lower_case:
        texts = [t.lower() for t in texts]
    enc = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length, padding=False)
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + count_truncated(enc, model.max_seq_length)
    return enc, np.argsort([-len(ids) for ids in enc["input_ids"]], kind="stable")


def count_truncated(enc: Any, max_length: int) -> int:
    """How many texts of a tokenizer output were cut at ``max_length``.

    Fast tokenizers record the cut-off tokens (``encodings[i].overflowing``), which is exact; for
    slow ones a text that fills ``max_length`` exactly is counted as cut too.
    """
    encodings = getattr(enc, "encodings", None)
    if encodings:
        return sum(bool(e.overflowing) for e in encodings)
    return sum(len(ids) >= max_length for ids in enc["input_ids"])


def pad_ids(tokenizer: Any) -> dict[str, int]:
    """The padding value of each feature the tokenizers give (others pad with 0)."""
    return {
        "input_ids": tokenizer.pad_token_id or 0,
        "attention_mask": 0,
        "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
    }


def pad_features(
    enc: Any, idx: np.ndarray, pad_ids: dict[str, int], left: bool
) -> dict[str, np.ndarray]:
    """Rows ``idx`` of an unpadded tokenizer output as padded int64 arrays (one per feature)."""
    width = max(len(enc["input_ids"][i]) for i in idx)
    batch = {}
    for key in enc:
        arr = np.full((len(idx), width), pad_ids.get(key, 0), dtype=np.int64)
        rows = enc[key]
        for j, i in enumerate(idx):
            seq = rows[i]
            if left:
                arr[j, width - len(seq) :] = seq
            else:
                arr[j, : len(seq)] = seq
        batch[key] = arr
    return batch
