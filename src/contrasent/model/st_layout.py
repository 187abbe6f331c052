"""Reading and writing sentence-transformers (ST) directories for `contrasent.model.encoder.Encoder`
(passed in as ``encoder``: this module sits below it).

An ST directory is `modules.json`: Transformer, [WeightedLayerPooling], Pooling, [Dense...],
[Normalize]. `Encoder.save` writes one that `SentenceTransformer(dir)` and `AutoModel.from_pretrained(dir)`
both load unchanged. Poolings that ST's Pooling lacks are written with standard ST modules:

- ``cls`` (BERT's pooler, dense + tanh on the CLS token) = Pooling("cls") + Dense(pooler weights, Tanh)
- ``avg_top2`` / ``avg_first_last`` / ``avg_embeddings_last`` = WeightedLayerPooling (a weighted mean over the hidden states,
  config.json gets ``output_hidden_states``) + Pooling("mean")

Files written in the legacy key format (``word_embedding_dimension``, ``pooling_mode_*_tokens``,
``sentence_transformers.models.*``) that every sentence-transformers release from 2.x to 6.x reads.
This module never imports `contrasent.model.encoder` at run time (encoder.py imports it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from contrasent.core.errors import UserError, where
from contrasent.model.pooling import HIDDEN_STATE_PICKS, HIDDEN_STATE_POOLINGS

META_FILE = "contrasent_config.json"  # our own hints; ST and AutoModel ignore unknown files
STModule = tuple[str, dict[str, Any], dict[str, Tensor] | None]  # (ST type, config, weights)
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


class DenseHead(nn.Module):
    """ST's Dense module (linear + activation) on the sentence embedding, kept to read ST dirs."""

    def __init__(self, linear: nn.Linear, activation: nn.Module) -> None:
        super().__init__()
        self.linear, self.activation = linear, activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.linear(x))


def pooler_linear(model: Any) -> nn.Linear | None:
    """BERT-style pooler dense layer (followed by tanh), or None when the model has none."""
    pooler = getattr(model, "pooler", None)
    dense, act = getattr(pooler, "dense", None), getattr(pooler, "activation", None)
    return dense if isinstance(dense, nn.Linear) and isinstance(act, nn.Tanh) else None


# -------------------------------------------------------------------- writing


def st_modules(encoder: Any) -> list[STModule]:
    """(ST type, config, weights) for every module after the Transformer."""
    h, n_layers = encoder.model.config.hidden_size, encoder.model.config.num_hidden_layers
    mods: list[STModule] = []
    if encoder.pooling in HIDDEN_STATE_POOLINGS:
        weights = torch.zeros(n_layers + 1)
        picks = [i % (n_layers + 1) for i in HIDDEN_STATE_PICKS[encoder.pooling]]
        weights.index_put_((torch.tensor(picks),), torch.ones(2), accumulate=True)
        start = min(picks)
        cfg = {
            "word_embedding_dimension": h,
            "layer_start": start,
            "num_hidden_layers": n_layers,
        }
        mods.append(("WeightedLayerPooling", cfg, {"layer_weights": weights[start:].clone()}))
    mode = {"cls": "cls", "cls_before_pooler": "cls", "max": "max"}.get(encoder.pooling, "mean")
    cfg = {"word_embedding_dimension": h} | {k: m == mode for m, k in _ST_POOLING_KEYS.items()}
    mods.append(("Pooling", cfg, None))
    heads = list(encoder.dense)
    if encoder.pooling == "cls":
        heads.insert(0, DenseHead(pooler_linear(encoder.model), nn.Tanh()))
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
    if encoder.normalize:
        mods.append(("Normalize", {}, None))
    return mods


def write_st(encoder: Any, out: Path, modules: list[STModule]) -> None:
    """Write the HF model, tokenizer and ST files for `modules` (from `st_modules`) into `out`."""
    from safetensors.torch import save_file

    from contrasent.core.version import __version__

    cfg, tok = encoder.model.config, encoder.tokenizer
    saved = (cfg.output_hidden_states, tok.model_max_length)
    # ST's Transformer hands hidden states to WeightedLayerPooling only when the config asks.
    cfg.output_hidden_states = encoder.pooling in HIDDEN_STATE_POOLINGS
    tok.model_max_length = encoder.max_seq_length
    try:
        encoder.model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
    finally:
        cfg.output_hidden_states, tok.model_max_length = saved
    _write_json(
        out / "sentence_bert_config.json",
        {"max_seq_length": encoder.max_seq_length, "do_lower_case": encoder.do_lower_case},
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
    meta = {**encoder.config_dict(), "contrasent": __version__}
    if getattr(encoder, "base_model", None):
        meta["base_model"] = encoder.base_model
    if getattr(encoder, "matryoshka_dims", None):
        meta["matryoshka_dims"] = list(encoder.matryoshka_dims)
    _write_json(out / META_FILE, meta)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


# -------------------------------------------------------------------- reading
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


def read_st_dir(path: Path) -> dict[str, Any]:
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
    hints = _read_json(meta) if meta.is_file() else {}
    st["hint"] = hints.get("pooling")
    st["base_model"] = hints.get("base_model")  # what the model card names as its origin
    st["matryoshka_dims"] = hints.get("matryoshka_dims")  # the dims it was trained at
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


def resolve_st(st: dict[str, Any], model: Any, path: Path) -> dict[str, Any]:
    """Map parsed ST modules onto (pooling, dense, normalize, max_seq_length)."""
    dense = list(st["dense"])
    if st["layers"] is not None:
        candidates = _layer_poolings(st["layers"], model.config.num_hidden_layers)
    elif st["mode"] == "cls":
        candidates = ["cls_before_pooler"]
        pooler = pooler_linear(model)
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
    for name, picks in HIDDEN_STATE_PICKS.items():
        want = torch.zeros(n_layers + 1)
        # accumulate: with one layer both picks name the same layer, which then weighs 1
        want.index_put_((torch.tensor(list(picks)),), torch.full((2,), 0.5), accumulate=True)
        if torch.allclose(full, want, atol=1e-6):
            found.append(name)
    if not found:
        raise UserError(
            f"{sub}: WeightedLayerPooling weights {weights.tolist()} (layer_start {start}) "
            f"are not {', '.join(HIDDEN_STATE_PICKS)}; contrasent cannot represent them"
        )
    return found


def _same_linear(a: nn.Linear, b: nn.Linear) -> bool:
    if a.weight.shape != b.weight.shape or (a.bias is None) != (b.bias is None):
        return False
    same_bias = a.bias is None or torch.equal(a.bias.detach().cpu(), b.bias.detach().cpu())
    return same_bias and torch.equal(a.weight.detach().cpu(), b.weight.detach().cpu())
