"""Encoder = a Hugging Face AutoModel + pooling, saved and loaded in the sentence-transformers layout.

`Encoder.from_pretrained` reads a hub id, a plain HF directory, or a sentence-transformers directory;
`save` writes a sentence-transformers directory. How ST directories are read and written (module
sequence, how poolings ST lacks are expressed, key format) lives in `contrasent.model.st_layout`.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrasent.core.errors import UserError
from contrasent.core.fileio import follow_umask, swap_into_place, temp_sibling
from contrasent.model.inputs import (
    checked_texts,
    pad_features,
    pad_ids,
    tokenize_longest_first,
)
from contrasent.model.loading import (
    autocast,
    default_max_len,
    held_copy,
    load_hf,
    model_source,
    pick_device,
    position_limit,
    resolve_precision,
    unused_inputs,
)
from contrasent.model.passes import (
    in_length_buckets,
    padded_position_ids,
    pool,
    relative_bias_from,
)
from contrasent.model.pooling import (
    HIDDEN_STATE_POOLINGS,
    POOLINGS,
    check_pooling,
)
from contrasent.model.similarity import similarity
from contrasent.model.st_layout import (
    DenseHead,
    pooler_linear,
    read_st_dir,
    resolve_st,
    st_modules,
    write_st,
)

log = logging.getLogger(__name__)
PROGRESS_MIN_TEXTS = 5000  # default progress bar only for long inputs on an interactive stderr
# Model types whose forward computes from `inputs_embeds` exactly what it computes from the ids
# (given the position ids): tested family by family (tests/test_speed_options.py). Others keep
# one lookup per bucket: some scale or pad only on the ids path.
SHARED_LOOKUP_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "mpnet"})


class Encoder(nn.Module):
    """HF AutoModel + pooling (+ optional ST Dense heads) + optional L2 normalisation.

    ``hidden_size`` is the size of the returned embedding (the last Dense's output if any).
    ``forward`` passes extra feature keys (position_ids, inputs_embeds, token_type_ids, ...) to the
    HF model; when ``inputs_embeds`` is given, ``input_ids`` is dropped (HF accepts only one).
    """

    POOLINGS = POOLINGS

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        pooling: str = "mean",
        normalize: bool = False,
        max_seq_length: int | None = None,
        dense: Sequence[DenseHead] = (),
        do_lower_case: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.pooling = check_pooling(pooling)
        if pooling == "cls" and pooler_linear(model) is None:
            raise UserError(
                f"pooling 'cls' needs a BERT-style pooler (dense + tanh), but "
                f"{type(model).__name__} has none: use 'cls_before_pooler'"
            )
        self.normalize = bool(normalize)
        #: length buckets of ``forward`` (see :meth:`forward`); the training loop sets it from
        #: ``train.length_buckets``; not saved (how a pass runs, not what the model is)
        self.length_buckets = 1
        self.dense = nn.ModuleList(dense)
        self.do_lower_case = do_lower_case
        self.base_model: str | None = None  # set by from_pretrained; named by the model card
        #: the dimensions a Matryoshka objective trained (saved; ``--dim`` warns outside them)
        self.matryoshka_dims: list[int] | None = None
        # a tokenizer may return token types the model has none of (a BERT tokenizer shipped
        # with DistilBERT or MPNet): they are never sent to the model
        self.unused_inputs = unused_inputs(model)
        limit = position_limit(model)
        self.max_seq_length = int(max_seq_length or default_max_len(model, tokenizer))
        if limit is not None and self.max_seq_length > limit:
            raise UserError(
                f"max_seq_length {self.max_seq_length} exceeds the model's "
                f"max_position_embeddings ({limit})"
            )

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_seq_length: int | None = None,
        device: str | torch.device | None = None,
        backend: str = "torch",
        file_name: str | None = None,
    ) -> Encoder:
        """Load a hub id, an HF directory or a sentence-transformers directory.

        Arguments left as None come from the ST directory (or default to mean pooling, no
        normalisation, the model's max length). ``device`` None = CUDA when available, else CPU.
        ``backend="onnx"`` returns a `contrasent.model.onnx.OnnxEncoder` (same ``encode``) for a
        directory written by ``contrasent export``; ``file_name`` picks its ONNX file (default
        ``onnx/model.onnx``; e.g. ``onnx/model_qint8_avx512_vnni.onnx`` for the int8 one).
        """
        if backend != "torch":
            from contrasent.model.onnx import OnnxEncoder

            if backend != "onnx":
                raise UserError(f"unknown backend {backend!r}; valid: torch, onnx")
            return OnnxEncoder.from_pretrained(
                name_or_path, pooling, normalize, max_seq_length, device, file_name
            )
        if pooling is not None:
            check_pooling(pooling)
        path = Path(os.fspath(name_or_path)).expanduser()
        st = read_st_dir(path) if (path / "modules.json").is_file() else None
        source = str(path / st["transformer_path"]) if st else model_source(name_or_path, path)
        model, tokenizer, random_pooler = load_hf(source)
        kw: dict[str, Any] = {"pooling": "mean", "normalize": False}
        if st:
            kw = resolve_st(st, model, path)
        if pooling is not None:
            if kw["pooling"] == "cls" and pooling != "cls":
                kw["dense"] = kw["dense"][1:]  # the pooler Dense belonged to 'cls'
            kw["pooling"] = pooling
        if normalize is not None:
            kw["normalize"] = normalize
        kw["max_seq_length"] = max_seq_length or kw.get("max_seq_length")
        if kw["pooling"] == "cls" and random_pooler:
            log.warning(
                "%s has no pooler weights: pooling 'cls' starts from a random pooler", source
            )
        encoder = cls(model, tokenizer, **kw).to(pick_device(device))
        # The model a saved folder descends from (its model card names it): carried through
        # contrasent's own folders, else the name this encoder was loaded by.
        encoder.base_model = (st or {}).get("base_model") or os.fspath(name_or_path)
        encoder.matryoshka_dims = (st or {}).get("matryoshka_dims")
        return encoder

    def config_dict(self) -> dict[str, Any]:
        """How this encoder embeds (saved beside the model; recorded with STS results)."""
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
        }

    # ---------------------------------------------------------------- properties
    @property
    def hidden_size(self) -> int:
        return (
            self.dense[-1].linear.out_features if len(self.dense) else self.model.config.hidden_size
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- forward
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, Tensor]:
        """Padded batch as tensors on this encoder's device, truncated to ``max_length`` tokens
        (training's ``data.max_seq_length``), by default to ``max_seq_length`` (inference)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=min(max_length or self.max_seq_length, self.max_seq_length),
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in enc.items() if k not in self.unused_inputs}

    def forward(self, features: dict[str, Tensor], augment: Any = None) -> Tensor:
        """Pooled sentence embeddings [B, hidden_size] of tokenized ``features``.

        ``augment`` (an embedding-level augmentation, ConSERT's views) acts inside the forward:
        its ``positions(position_ids, attention_mask)`` (if it has one) rewrites the position ids
        given to the model, starting from the model's own (RoBERTa-style models count from
        ``padding_idx + 1``); its ``embeddings(embedding_output, attention_mask)`` (if any)
        rewrites the output of the model's embedding layer (word + position + token-type
        embeddings after LayerNorm and dropout), before the first transformer layer.
        """
        if augment is None:
            if self.length_buckets > 1:
                left = getattr(self.tokenizer, "padding_side", "right") == "left"
                embed = functools.partial(self._embed, normalize=self.normalize)
                return in_length_buckets(
                    embed, features, self.length_buckets, left, self._shared_lookup()
                )
            return self._embed(features, self.normalize)
        feats = dict(features)
        mask = feats["attention_mask"]
        moved = nullcontext()
        if hasattr(augment, "positions"):
            feats["position_ids"] = augment.positions(self.position_ids(feats), mask)
            moved = relative_bias_from(self.model, feats["position_ids"])
        if not hasattr(augment, "embeddings"):
            with moved:
                return self._embed(feats, self.normalize)

        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
            return augment.embeddings(output, mask)

        handle = self.embedding_layer().register_forward_hook(hook)
        try:
            with moved:
                return self._embed(feats, self.normalize)
        finally:
            handle.remove()

    def embedding_layer(self) -> nn.Module:
        """The HF model's embeddings module (its output feeds the first transformer layer)."""
        layer = getattr(self.model.base_model, "embeddings", None)
        if not isinstance(layer, nn.Module):
            raise UserError(
                f"{type(self.model).__name__} has no 'embeddings' module: embedding-level "
                "augmentations are not supported for this architecture"
            )
        return layer

    def _shared_lookup(self) -> Callable[[dict[str, Tensor]], dict[str, Tensor]] | None:
        """``features`` -> the same with ``inputs_embeds`` (the word embeddings of ``input_ids``)
        in place of the ids and the model's own position ids made explicit, so that bucketed
        passes share one lookup; None for model types not in :data:`SHARED_LOOKUP_TYPES`."""
        if getattr(self.model.config, "model_type", None) not in SHARED_LOOKUP_TYPES:
            return None
        words = self.model.get_input_embeddings()
        explicit = getattr(self.embedding_layer(), "padding_idx", None) is not None

        def lookup(features: dict[str, Tensor]) -> dict[str, Tensor]:
            feats = dict(features)  # in_length_buckets: ids, never a caller's inputs_embeds
            if explicit:  # from the ids (pads keep padding_idx); from embeddings they would not
                feats["position_ids"] = self.position_ids(features)
            feats["inputs_embeds"] = words(feats.pop("input_ids"))
            return feats

        return lookup

    def position_ids(self, features: dict[str, Tensor]) -> Tensor:
        """The position ids the model would use by default for ``features`` [B, T]."""
        if features.get("position_ids") is not None:
            return features["position_ids"]
        ids = features["input_ids"]
        padding_idx = getattr(self.embedding_layer(), "padding_idx", None)
        if padding_idx is not None:  # RoBERTa, XLM-R, MPNet: padding_idx + 1 + index, pads stay
            return padded_position_ids(ids, padding_idx)
        return torch.arange(ids.shape[1], device=ids.device).expand_as(ids)

    def _embed(
        self, features: dict[str, Tensor], normalize: bool, model: nn.Module | None = None
    ) -> Tensor:
        """Pooled (+ heads, + normalised) embeddings; ``model`` (default: ``self.model``) may be a
        bf16 copy: its token states are pooled in fp32."""
        feats = dict(features)
        if feats.get("inputs_embeds") is not None:
            feats.pop("input_ids", None)
        need_hidden = self.pooling in HIDDEN_STATE_POOLINGS
        model = self.model if model is None else model
        out = model(**feats, output_hidden_states=need_hidden, return_dict=True)
        hidden = _fp32(out.last_hidden_state)
        mask = feats.get("attention_mask")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        pooler = getattr(out, "pooler_output", None)
        emb = pool(
            self.pooling,
            hidden,
            mask,
            tuple(map(_fp32, out.hidden_states)) if need_hidden else None,
            None if pooler is None else _fp32(pooler),
        )
        for head in self.dense:
            emb = head(emb)
        return F.normalize(emb, p=2, dim=-1) if normalize else emb

    # ---------------------------------------------------------------- inference
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize: bool | None = None,
        show_progress: bool | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        stats: dict[str, int] | None = None,
    ) -> np.ndarray:
        """Embed texts -> float32 array [N, hidden_size] in input order.

        Texts are tokenized once, then batched longest-first by token count (little padding).
        Empty, whitespace-only, non-ASCII and over-long (truncated) texts are fine. ``device``
        moves the encoder there (and it stays). ``precision``: ``bf16`` runs the transformer
        with its weights held in bf16 (a copy made once and kept while the weights do not
        change; pooling, heads and normalisation stay fp32); ``fp16`` CUDA autocast (CUDA only);
        ``auto`` bf16 where the device has fast bf16 matmuls (CUDA, AMX, AVX512-BF16), else
        fp16 on CUDA / fp32 on a CPU (`contrasent.model.loading.resolve_precision`). ``show_progress`` None = a bar (sentences/s) only for >= 5000 texts on a
        terminal. A single string is treated as a one-element list. ``stats``, when given, gets
        ``stats["truncated"]`` increased by the number of texts cut at max_seq_length.
        """
        texts = checked_texts(texts, batch_size)
        if device is not None:
            self.to(pick_device(device))
        precision = resolve_precision(self.device, precision)
        amp = autocast(self.device, precision)
        model = self._held_model(torch.bfloat16) if precision == "bf16" else self.model
        normalize = self.normalize if normalize is None else normalize
        out = np.empty((len(texts), self.hidden_size), dtype=np.float32)
        if not texts:
            return out
        if show_progress is None:
            show_progress = len(texts) >= PROGRESS_MIN_TEXTS
        enc, order = tokenize_longest_first(self, texts, stats)
        from contrasent.core.progress import progress

        bar = progress(len(texts), "encode", "sent", disable=not show_progress)
        with self._eval_mode(), torch.inference_mode(), amp, bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                feats = self._collate(enc, idx)
                mask = feats.get("attention_mask")
                if mask is not None and bool(mask.all()):  # no padding (length-sorted batches):
                    del feats["attention_mask"]  # attention runs unmasked, ~2% faster on CPU
                emb = self._embed(feats, normalize, model)
                out[idx] = emb.float().cpu().numpy()
                bar.update(len(idx))
        return out

    def similarity(self, a: Any, b: Any, batch_size: int = 64) -> float | np.ndarray:
        """Cosine similarity of texts or embeddings: two lists give a [len(a), len(b)] matrix, a
        single string on one side drops that axis, two strings give a float (as SimCSE's tool)."""

        return similarity(self, a, b, batch_size=batch_size)

    def _collate(self, enc: Any, idx: np.ndarray) -> dict[str, Tensor]:
        """Pad the pre-tokenized rows `idx` into tensors on this encoder's device."""
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        feats = {k: v for k, v in enc.items() if k not in self.unused_inputs}
        return {
            k: torch.from_numpy(v).to(self.device, non_blocking=True)
            for k, v in pad_features(feats, idx, pad_ids(self.tokenizer), left).items()
        }

    def _held_model(self, dtype: torch.dtype) -> nn.Module:
        """The transformer with its weights in ``dtype``: `contrasent.model.loading.held_copy`,
        kept in this encoder's ``__dict__`` (outside the module tree: not saved, not trained,
        not moved by ``.to``)."""
        return held_copy(self.__dict__, self.model, dtype)

    @contextmanager
    def one_pass(self) -> Iterator[None]:
        """Forwards inside run as one pass over all rows (``length_buckets`` off): for callers
        whose forward hooks need the token states of every row, in row order (DeCLUTR's masked
        anchors give both the embeddings and the MLM loss)."""
        buckets, self.length_buckets = self.length_buckets, 1
        try:
            yield
        finally:
            self.length_buckets = buckets

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    # ---------------------------------------------------------------- saving
    def card_info(self) -> dict[str, Any]:
        """What a model card says about this encoder by itself (see ``contrasent.model.card``)."""
        return {
            "base_model": self.base_model,
            "encoder": {**self.config_dict(), "dimension": self.hidden_size}
            | ({"matryoshka_dims": self.matryoshka_dims} if self.matryoshka_dims else {}),
        }

    def save(self, path: str | os.PathLike, card: dict[str, Any] | None = None) -> None:
        """Write a sentence-transformers directory atomically (temp dir, then rename).

        An existing target is replaced only if it is empty or a model directory (has config.json
        or modules.json); anything else is refused rather than deleted. The folder gets a
        ``README.md`` model card: base model, pooling and usage by default; ``card`` adds the
        run's information (keys: ``contrasent.model.card.write_model_card``).
        """
        name = os.fspath(path)  # as the user wrote it: the id in the card's usage snippets
        path = Path(name).expanduser().absolute()
        if path.exists():
            if not path.is_dir():
                raise UserError(f"cannot save model to {path}: it exists and is not a directory")
            known = {"config.json", "modules.json"}
            if any(path.iterdir()) and not any((path / f).exists() for f in known):
                raise UserError(
                    f"cannot save model to {path}: a non-empty directory that is not "
                    "a model directory (refusing to replace it)"
                )
        modules = st_modules(self)  # raises UserError before anything is written
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(path)
        os.mkdir(tmp)
        try:
            write_st(self, tmp, modules)
            from contrasent.model.card import write_model_card

            write_model_card(tmp, {"model_name": name, **self.card_info(), **(card or {})})
            follow_umask(tmp)
            swap_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _fp32(t: Tensor) -> Tensor:
    """Half-precision token states (a bf16 copy, fp16 autocast) up to fp32 for pooling; fp32 and
    fp64 (a model run in double) are left as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t
