"""Encoder = a Hugging Face AutoModel + pooling, saved and loaded in the sentence-transformers layout.

`Encoder.from_pretrained` reads a hub id, a plain HF directory, or a sentence-transformers directory
(`modules.json`: Transformer, [WeightedLayerPooling], Pooling, [Dense...], [Normalize]). `save` writes
a sentence-transformers directory that `SentenceTransformer(dir)` and `AutoModel.from_pretrained(dir)`
both load unchanged. Poolings that ST's Pooling lacks are written with standard ST modules:

- ``cls`` (BERT's pooler, dense + tanh on the CLS token) = Pooling("cls") + Dense(pooler weights, Tanh)
- ``avg_top2`` / ``avg_first_last`` = WeightedLayerPooling (a weighted mean over the hidden states,
  config.json gets ``output_hidden_states``) + Pooling("mean")

Files written in the legacy key format (``word_embedding_dimension``, ``pooling_mode_*_tokens``,
``sentence_transformers.models.*``) that every sentence-transformers release from 2.x to 6.x reads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrasent.errors import UserError, where

log = logging.getLogger(__name__)
POOLINGS = ("cls", "cls_before_pooler", "mean", "max", "avg_top2", "avg_first_last")
HIDDEN_STATE_POOLINGS = ("avg_top2", "avg_first_last")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
META_FILE = "contrasent_config.json"  # our own hints; ST and AutoModel ignore unknown files
PROGRESS_MIN_TEXTS = 5000  # default progress bar only for long inputs on an interactive stderr
_ST_CONFIGS = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_xlm-roberta_config.json",
)
_ST_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
}


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; valid poolings: {', '.join(POOLINGS)}")
    return pooling


def pool(
    pooling: str,
    last_hidden_state: Tensor,
    attention_mask: Tensor,
    hidden_states: Sequence[Tensor] | None = None,
    pooler_output: Tensor | None = None,
) -> Tensor:
    """Pool token states [B, T, H] into sentence vectors [B, H] (pure function).

    ``hidden_states`` follows HF: ``hidden_states[0]`` is the embedding-layer output and
    ``hidden_states[i]`` the output of transformer layer i. ``avg_first_last`` therefore averages
    layer 1 and the last layer, as SimCSE's models.py does (not the embedding layer).
    ``cls`` is the HF ``pooler_output`` (BERT: tanh(dense(CLS))); ``cls_before_pooler`` the raw
    first real token. Masked reductions accumulate in float32 (safe under autocast).
    """
    check_pooling(pooling)
    if pooling == "cls":
        if pooler_output is None:
            raise UserError(
                "pooling 'cls' needs a model with a pooler (BERT-style); this model has "
                "none: use 'cls_before_pooler'"
            )
        return pooler_output
    if pooling == "cls_before_pooler":
        # First real token (index 0 with right padding), as ST's Pooling("cls") picks it.
        first = attention_mask.to(torch.int).argmax(dim=1)
        return last_hidden_state[torch.arange(len(first), device=first.device), first]
    mask = attention_mask.unsqueeze(-1)
    if pooling == "max":
        return last_hidden_state.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    if pooling in HIDDEN_STATE_POOLINGS:
        if hidden_states is None or len(hidden_states) < 2:
            raise UserError(f"pooling {pooling!r} needs the model's hidden states")
        a, b = (-1, -2) if pooling == "avg_top2" else (1, -1)
        tokens = (hidden_states[a] + hidden_states[b]) / 2
    else:
        tokens = last_hidden_state
    mask = mask.to(torch.float32)
    return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class DenseHead(nn.Module):
    """ST's Dense module (linear + activation) on the sentence embedding, kept to read ST dirs."""

    def __init__(self, linear: nn.Linear, activation: nn.Module) -> None:
        super().__init__()
        self.linear, self.activation = linear, activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.linear(x))


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
        if pooling == "cls" and _pooler_linear(model) is None:
            raise UserError(
                f"pooling 'cls' needs a BERT-style pooler (dense + tanh), but "
                f"{type(model).__name__} has none: use 'cls_before_pooler'"
            )
        self.normalize = bool(normalize)
        self.dense = nn.ModuleList(dense)
        self.do_lower_case = do_lower_case
        limit = _position_limit(model)
        self.max_seq_length = int(max_seq_length or _default_max_len(model, tokenizer))
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
    ) -> Encoder:
        """Load a hub id, an HF directory or a sentence-transformers directory.

        Arguments left as None come from the ST directory (or default to mean pooling, no
        normalisation, the model's max length). ``device`` None = CUDA when available, else CPU.
        """
        if pooling is not None:
            check_pooling(pooling)
        path = Path(os.fspath(name_or_path)).expanduser()
        st = _read_st_dir(path) if (path / "modules.json").is_file() else None
        source = str(path / st["transformer_path"]) if st else _model_source(name_or_path, path)
        model, tokenizer, random_pooler = _load_hf(source)
        kw: dict[str, Any] = {"pooling": "mean", "normalize": False}
        if st:
            kw = _resolve_st(st, model, path)
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
        return cls(model, tokenizer, **kw).to(_pick_device(device))

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
    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Padded, truncated (max_seq_length) batch as tensors on this encoder's device."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self._embed(features, self.normalize)

    def _embed(self, features: dict[str, Tensor], normalize: bool) -> Tensor:
        feats = dict(features)
        if feats.get("inputs_embeds") is not None:
            feats.pop("input_ids", None)
        need_hidden = self.pooling in HIDDEN_STATE_POOLINGS
        out = self.model(**feats, output_hidden_states=need_hidden, return_dict=True)
        hidden = out.last_hidden_state
        mask = feats.get("attention_mask")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        emb = pool(
            self.pooling,
            hidden,
            mask,
            out.hidden_states if need_hidden else None,
            getattr(out, "pooler_output", None),
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
    ) -> np.ndarray:
        """Embed texts -> float32 array [N, hidden_size] in input order.

        Texts are tokenized once, then batched longest-first by token count (little padding).
        Empty, whitespace-only, non-ASCII and over-long (truncated) texts are fine. ``device``
        moves the encoder there (and it stays). ``precision`` fp16/bf16 runs CUDA autocast; on a
        CPU it raises UserError rather than silently running fp32 (CPU half precision is slow and
        changes results). ``show_progress`` None = a bar (sentences/s) only for >= 5000 texts on a
        terminal. A single string is treated as a one-element list.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise UserError(f"encode: text {bad} is {type(texts[bad]).__name__}, not str")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if device is not None:
            self.to(_pick_device(device))
        amp = _autocast(self.device, precision)
        normalize = self.normalize if normalize is None else normalize
        out = np.empty((len(texts), self.hidden_size), dtype=np.float32)
        if not texts:
            return out
        if show_progress is None:
            show_progress = len(texts) >= PROGRESS_MIN_TEXTS and sys.stderr.isatty()
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length, padding=False)
        order = np.argsort([-len(ids) for ids in enc["input_ids"]], kind="stable")
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), unit="sent", desc="encode", disable=not show_progress)
        with self._eval_mode(), torch.inference_mode(), amp, bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                emb = self._embed(self._collate(enc, idx), normalize)
                out[idx] = emb.float().cpu().numpy()
                bar.update(len(idx))
        return out

    def _collate(self, enc: Any, idx: np.ndarray) -> dict[str, Tensor]:
        """Pad the pre-tokenized rows `idx` into tensors (numpy fill: cheaper than tokenizer.pad)."""
        rows = [enc["input_ids"][i] for i in idx]
        width = max(len(r) for r in rows)
        pads = {
            "input_ids": self.tokenizer.pad_token_id or 0,
            "attention_mask": 0,
            "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0),
        }
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        batch = {}
        for key in enc:
            arr = np.full((len(idx), width), pads.get(key, 0), dtype=np.int64)
            for j, i in enumerate(idx):
                seq = enc[key][i]
                if left:
                    arr[j, width - len(seq) :] = seq
                else:
                    arr[j, : len(seq)] = seq
            batch[key] = torch.from_numpy(arr).to(self.device, non_blocking=True)
        return batch

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    # ---------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike) -> None:
        """Write a sentence-transformers directory atomically (temp dir, then rename).

        An existing target is replaced only if it is empty or a model directory (has config.json
        or modules.json); anything else is refused rather than deleted.
        """
        path = Path(os.fspath(path)).expanduser().absolute()
        if path.exists():
            if not path.is_dir():
                raise UserError(f"cannot save model to {path}: it exists and is not a directory")
            known = {"config.json", "modules.json"}
            if any(path.iterdir()) and not any((path / f).exists() for f in known):
                raise UserError(
                    f"cannot save model to {path}: a non-empty directory that is not "
                    "a model directory (refusing to replace it)"
                )
        modules = self._st_modules()  # raises UserError before anything is written
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.mkdir(tmp)
        try:
            self._write_st(tmp, modules)
            _swap_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _st_modules(self) -> list[tuple[str, dict[str, Any], dict[str, Tensor] | None]]:
        """(ST type, config, weights) for every module after the Transformer."""
        h, n_layers = self.model.config.hidden_size, self.model.config.num_hidden_layers
        mods: list[tuple[str, dict[str, Any], dict[str, Tensor] | None]] = []
        if self.pooling in HIDDEN_STATE_POOLINGS:
            weights = torch.zeros(n_layers + 1)
            weights[[-1, -2] if self.pooling == "avg_top2" else [1, -1]] = 1.0
            start = n_layers - 1 if self.pooling == "avg_top2" else 1
            cfg = {
                "word_embedding_dimension": h,
                "layer_start": start,
                "num_hidden_layers": n_layers,
            }
            mods.append(("WeightedLayerPooling", cfg, {"layer_weights": weights[start:].clone()}))
        mode = {"cls": "cls", "cls_before_pooler": "cls", "max": "max"}.get(self.pooling, "mean")
        cfg = {"word_embedding_dimension": h} | {k: m == mode for m, k in _ST_POOLING_KEYS.items()}
        mods.append(("Pooling", cfg, None))
        heads = list(self.dense)
        if self.pooling == "cls":
            heads.insert(0, DenseHead(_pooler_linear(self.model), nn.Tanh()))
        for head in heads:
            act = type(head.activation)
            if not act.__module__.startswith("torch.nn"):
                raise UserError(
                    f"cannot save Dense activation {act.__name__} in the "
                    "sentence-transformers layout (only torch.nn modules load there)"
                )
            lin = head.linear
            cfg = {
                "in_features": lin.in_features,
                "out_features": lin.out_features,
                "bias": lin.bias is not None,
                "activation_function": f"{act.__module__}.{act.__name__}",
            }
            mods.append(("Dense", cfg, {f"linear.{k}": v for k, v in lin.state_dict().items()}))
        if self.normalize:
            mods.append(("Normalize", {}, None))
        return mods

    def _write_st(self, out: Path, modules: list) -> None:
        from safetensors.torch import save_file

        from contrasent import __version__

        cfg, tok = self.model.config, self.tokenizer
        saved = (cfg.output_hidden_states, tok.model_max_length)
        # ST's Transformer hands hidden states to WeightedLayerPooling only when the config asks.
        cfg.output_hidden_states = self.pooling in HIDDEN_STATE_POOLINGS
        tok.model_max_length = self.max_seq_length
        try:
            self.model.save_pretrained(str(out))
            tok.save_pretrained(str(out))
        finally:
            cfg.output_hidden_states, tok.model_max_length = saved
        _write_json(
            out / "sentence_bert_config.json",
            {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case},
        )
        entries = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
        ]
        for i, (kind, mcfg, weights) in enumerate(modules, start=1):
            sub = out / f"{i}_{kind}"
            sub.mkdir()
            _write_json(sub / "config.json", mcfg)
            if weights is not None:
                save_file(
                    {k: v.detach().float().cpu().contiguous() for k, v in weights.items()},
                    str(sub / "model.safetensors"),
                )
            entries.append(
                {
                    "idx": i,
                    "name": str(i),
                    "path": sub.name,
                    "type": f"sentence_transformers.models.{kind}",
                }
            )
        _write_json(out / "modules.json", entries)
        versions = {"transformers": _version("transformers"), "pytorch": torch.__version__}
        _write_json(
            out / "config_sentence_transformers.json",
            {
                "__version__": versions,
                "prompts": {},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
        )
        _write_json(
            out / META_FILE,
            {
                "pooling": self.pooling,
                "normalize": self.normalize,
                "max_seq_length": self.max_seq_length,
                "contrasent": __version__,
            },
        )


# -------------------------------------------------------------------- helpers: HF loading
def _model_source(name_or_path: str | os.PathLike, path: Path) -> str:
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model directory {path} has no config.json (nor modules.json): not a "
                "Hugging Face or sentence-transformers model directory"
            )
        return str(path)
    name = os.fspath(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name:
        raise UserError(f"model path {name} does not exist")
    return name


def _load_hf(source: str) -> tuple[Any, Any, bool]:
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model, info = AutoModel.from_pretrained(
            source, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot load model {source!r}: {first} (give a local model directory or a "
            "Hugging Face hub id; offline runs need a local directory)"
        ) from e
    random_pooler = any("pooler" in k for k in info.get("missing_keys", ()))
    return model, tokenizer, random_pooler


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available")
    return dev


def _autocast(device: torch.device, precision: str) -> Any:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    if device.type != "cuda":
        raise UserError(
            f"precision {precision!r} needs a CUDA device (autocast runs on GPU "
            f"only here); on {device.type} use precision 'fp32'"
        )
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError("precision 'bf16' is not supported on this GPU; use 'fp16' or 'fp32'")
    return torch.autocast("cuda", dtype=dtype)


def _pooler_linear(model: Any) -> nn.Linear | None:
    pooler = getattr(model, "pooler", None)
    dense, act = getattr(pooler, "dense", None), getattr(pooler, "activation", None)
    return dense if isinstance(dense, nn.Linear) and isinstance(act, nn.Tanh) else None


def _position_limit(model: Any) -> int | None:
    limit = getattr(model.config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def _default_max_len(model: Any, tokenizer: Any) -> int:
    """min(tokenizer.model_max_length, max_position_embeddings), as sentence-transformers caps it."""
    sane = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    found = [x for x in (sane, _position_limit(model)) if x]
    return min(found) if found else 512


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


# -------------------------------------------------------------------- helpers: ST layout
def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{where(file)}: cannot read JSON: {e}") from e


def _write_json(file: Path, obj: Any) -> None:
    file.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _read_weights(folder: Path) -> dict[str, Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UserError(f"{folder}: no model.safetensors or pytorch_model.bin")


def _read_st_dir(path: Path) -> dict[str, Any]:
    """Parse modules.json and module configs into plain values (the HF model is loaded later)."""
    mfile = path / "modules.json"
    modules = _read_json(mfile)
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    rest, i = kinds[1:], 0
    for kind, repeat in (
        ("WeightedLayerPooling", False),
        ("Pooling", False),
        ("Dense", True),
        ("Normalize", False),
    ):
        while i < len(rest) and rest[i] == kind:
            i += 1
            if not repeat:
                break
    if kinds[:1] != ["Transformer"] or i != len(rest) or rest.count("Pooling") != 1:
        raise UserError(
            f"{where(mfile)}: unsupported module sequence {kinds}; contrasent reads "
            "Transformer, [WeightedLayerPooling], Pooling, [Dense...], [Normalize]"
        )
    st: dict[str, Any] = {
        "transformer_path": modules[0].get("path", ""),
        "dense": [],
        "layers": None,
        "normalize": "Normalize" in rest,
    }
    tdir = path / st["transformer_path"]
    tcfg = next((_read_json(tdir / n) for n in _ST_CONFIGS if (tdir / n).is_file()), {})
    if (
        tcfg.get("transformer_task", "feature-extraction") != "feature-extraction"
        or tcfg.get("modality_config", {})
        .get("text", {})
        .get("method_output_name", "last_hidden_state")
        != "last_hidden_state"
    ):
        raise UserError(
            f"{tdir}: only feature-extraction Transformer modules on last_hidden_state "
            "are supported"
        )
    st["max_seq_length"], st["do_lower_case"] = (
        tcfg.get("max_seq_length"),
        tcfg.get("do_lower_case", False),
    )
    for m, kind in zip(modules[1:], rest, strict=True):
        sub = path / m.get("path", "")
        cfg = _read_json(sub / "config.json") if (sub / "config.json").is_file() else {}
        if kind == "Pooling":
            st["mode"] = _pooling_mode(cfg, sub)
        elif kind == "WeightedLayerPooling":
            st["layers"] = (cfg, _read_weights(sub)["layer_weights"].float(), sub)
        elif kind == "Dense":
            st["dense"].append(_dense_head(cfg, _read_weights(sub), sub))
    if st["layers"] is not None and st["mode"] != "mean":
        raise UserError(f"{path}: WeightedLayerPooling is only supported before mean pooling")
    meta = path / META_FILE
    st["hint"] = _read_json(meta).get("pooling") if meta.is_file() else None
    return st


def _pooling_mode(cfg: dict[str, Any], sub: Path) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for m, k in _ST_POOLING_KEYS.items() if cfg.get(k)]
        modes += [
            k for k in ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken") if cfg.get(k)
        ]
        mode = modes if len(modes) != 1 else modes[0]
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode not in ("cls", "mean", "max"):
        raise UserError(
            f"{where(sub / 'config.json')}: pooling mode {mode!r} is not supported "
            "(contrasent reads cls, mean or max)"
        )
    return mode


def _dense_head(cfg: dict[str, Any], weights: dict[str, Tensor], sub: Path) -> DenseHead:
    import importlib

    name = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    module, _, cls_name = name.rpartition(".")
    act_cls = (
        getattr(importlib.import_module(module), cls_name, None)
        if name.startswith("torch.")
        else None
    )
    if not (isinstance(act_cls, type) and issubclass(act_cls, nn.Module)):
        raise UserError(f"{where(sub / 'config.json')}: unsupported Dense activation {name!r}")
    lin = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    lin.load_state_dict({k.removeprefix("linear."): v for k, v in weights.items()})
    return DenseHead(lin, act_cls())


def _resolve_st(st: dict[str, Any], model: Any, path: Path) -> dict[str, Any]:
    """Map parsed ST modules onto (pooling, dense, normalize, max_seq_length)."""
    dense = list(st["dense"])
    if st["layers"] is not None:
        candidates = _layer_poolings(st["layers"], model.config.num_hidden_layers)
    elif st["mode"] == "cls":
        candidates = ["cls_before_pooler"]
        pooler = _pooler_linear(model)
        head = dense[0] if dense else None
        if (
            pooler is not None
            and head is not None
            and isinstance(head.activation, nn.Tanh)
            and _same_linear(head.linear, pooler)
        ):
            candidates, dense = ["cls"], dense[1:]
    else:
        candidates = [st["mode"]]
    pooling = st["hint"] if st["hint"] in candidates else candidates[0]
    return {
        "pooling": pooling,
        "dense": dense,
        "normalize": st["normalize"],
        "max_seq_length": st["max_seq_length"],
        "do_lower_case": st["do_lower_case"],
    }


def _layer_poolings(layers: tuple[dict[str, Any], Tensor, Path], n_layers: int) -> list[str]:
    """Which of our poolings a WeightedLayerPooling config computes (several when equivalent)."""
    cfg, weights, sub = layers
    start = int(cfg.get("layer_start", 4))
    full = torch.zeros(n_layers + 1)
    if cfg.get("num_hidden_layers", n_layers) != n_layers or start + len(weights) != n_layers + 1:
        raise UserError(f"{sub}: WeightedLayerPooling does not match the model's {n_layers} layers")
    full[start:] = weights / weights.sum()
    found = []
    for name, picks in (("avg_top2", [-1, -2]), ("avg_first_last", [1, -1])):
        want = torch.zeros(n_layers + 1)
        # accumulate: with one layer both picks name the same layer, which then weighs 1
        want.index_put_((torch.tensor(picks),), torch.full((2,), 0.5), accumulate=True)
        if torch.allclose(full, want, atol=1e-6):
            found.append(name)
    if not found:
        raise UserError(
            f"{sub}: WeightedLayerPooling weights {weights.tolist()} (layer_start {start}) "
            "are not avg_top2 or avg_first_last; contrasent cannot represent them"
        )
    return found


def _same_linear(a: nn.Linear, b: nn.Linear) -> bool:
    if a.weight.shape != b.weight.shape or (a.bias is None) != (b.bias is None):
        return False
    same_bias = a.bias is None or torch.equal(a.bias.detach().cpu(), b.bias.detach().cpu())
    return same_bias and torch.equal(a.weight.detach().cpu(), b.weight.detach().cpu())


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename tmp -> path; an existing path is moved aside first and deleted after."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
