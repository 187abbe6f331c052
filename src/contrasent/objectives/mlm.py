"""Masked-language-modelling auxiliary loss (SimCSE's ``--do_mlm``; reusable by DeCLUTR).

SimCSE (Gao, Yao & Chen, 2021, Appendix / ``cl_forward``) adds ``mlm_weight * MLM`` (default 0.1,
masking rate 0.15) to the contrastive loss; DeCLUTR (Giorgi et al., 2021) always trains with MLM.
This module holds the pieces:

* :func:`mask_tokens`: BERT's 80/10/10 masking as a pure function of ids and a ``torch.Generator``;
* :class:`MLMHead`: the checkpoint's pretrained LM head when it has one (loaded through
  ``AutoModelForMaskedLM``), else a fresh BERT-style head (with a logged warning); its decoder is
  tied to the encoder's input embeddings *at call time*, so the head registers no encoder
  parameter (no duplicates in the optimizer, no encoder weights in the objective's state);
* :func:`mask_rows_keyed`: the same masking with one keyed generator per row;
* :class:`MLMAuxiliary`: the loss as a view (mode "mlm") of the objective that uses it.

The head is a training-only module of the objective: it is never saved with the encoder.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrasent.core.distributed import all_reduce_sum, world_size
from contrasent.core.errors import UserError
from contrasent.core.rng import keyed_generator
from contrasent.objectives.base import LossPart, View
from contrasent.objectives.functional import fp32

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def maskable_positions(input_ids: Tensor, attention_mask: Tensor, special_ids: list[int]) -> Tensor:
    """Bool mask of tokens that may be masked: real (attention 1) and not special ([CLS], ...)."""
    special = torch.isin(
        input_ids, torch.tensor(special_ids, dtype=input_ids.dtype, device=input_ids.device)
    )
    return attention_mask.bool() & ~special


def mask_tokens(
    input_ids: Tensor,
    maskable: Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    probability: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """BERT masking (Devlin et al., 2019), as HF's ``DataCollatorForLanguageModeling``.

    Each maskable token is selected with ``probability``; a selected token becomes ``[MASK]``
    (80%), a uniformly random id (10%) or stays (10%). Returns ``(inputs, labels)``, labels being
    the original id at selected positions and -100 elsewhere. Draws on the CPU ``generator``.
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"masking probability must be in (0, 1), got {probability}")
    ids = input_ids.detach().cpu()
    ok = maskable.detach().cpu().bool()
    shape = ids.shape
    selected = torch.bernoulli(torch.full(shape, probability), generator=generator).bool() & ok
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    to_mask = torch.bernoulli(torch.full(shape, 0.8), generator=generator).bool() & selected
    to_random = (
        torch.bernoulli(torch.full(shape, 0.5), generator=generator).bool() & selected & ~to_mask
    )
    random_ids = torch.randint(vocab_size, shape, generator=generator, dtype=ids.dtype)
    inputs = ids.masked_fill(to_mask, mask_token_id)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs.to(input_ids.device), labels.to(input_ids.device)


class TiedDecoder(nn.Module):
    """Vocabulary logits ``h @ E.T + bias``, ``E`` the encoder's input embeddings.

    ``E`` is held as a plain (unregistered) reference set by :meth:`tie`, so it is neither a
    parameter nor a state-dict entry of the objective: the encoder alone owns it.
    """

    def __init__(self, bias: nn.Parameter) -> None:
        super().__init__()
        self.bias = bias
        object.__setattr__(self, "_embeddings", None)

    def tie(self, embeddings: nn.Module) -> None:
        object.__setattr__(self, "_embeddings", embeddings)

    def forward(self, hidden: Tensor) -> Tensor:
        if self._embeddings is None:
            raise RuntimeError("MLM decoder not tied: call MLMHead.tie(encoder) first")
        return F.linear(hidden, self._embeddings.weight, self.bias)


class _FreshHead(nn.Module):
    """BERT's ``BertLMPredictionHead``: dense, GELU, LayerNorm, tied decoder (fresh weights)."""

    def __init__(self, hidden: int, emb_dim: int, vocab: int, eps: float, std: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, emb_dim)
        self.layer_norm = nn.LayerNorm(emb_dim, eps=eps)
        self.decoder = TiedDecoder(nn.Parameter(torch.zeros(vocab)))
        nn.init.normal_(self.dense.weight, std=std)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(hidden))))


def _load_pretrained_head(encoder: Any) -> tuple[nn.Module, TiedDecoder] | None:
    """The LM head of the encoder's checkpoint with its decoder swapped for a TiedDecoder."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    path = getattr(encoder.model, "name_or_path", None)
    if not path:
        return None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report of a head-less checkpoint is expected noise
    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError, KeyError) as err:
        log.info("no masked-LM class for %s (%s)", path, err)
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
    out = mlm.get_output_embeddings()
    found = _head_modules(mlm)
    if found is None or out is None:
        return None
    head, prefix = found  # prefix: how the head's parameter names start in the checkpoint
    dec_name = next((n for n, m in head.named_modules() if m is out), None)
    if dec_name is None:
        return None
    tied = {f"{prefix}{dec_name}.weight", f"{prefix}{dec_name}.bias"}  # tied: not in checkpoints
    starts = tuple(f"{prefix}{n}." for n, _ in head.named_children()) if not prefix else (prefix,)
    if {k for k in info["missing_keys"] if k.startswith(starts)} - tied:
        return None  # the checkpoint has no (complete) LM head, e.g. a bare BertModel
    parent = head.get_submodule(dec_name.rpartition(".")[0]) if "." in dec_name else head
    bias = out.bias if out.bias is not None else nn.Parameter(torch.zeros(out.out_features))
    decoder = TiedDecoder(bias)
    setattr(parent, dec_name.rpartition(".")[2], decoder)
    return head, decoder


# Masked-LM classes whose head is several top-level modules rather than one: their order in the
# class's forward (DistilBertForMaskedLM: transform, GELU, LayerNorm, projector).
SPLIT_HEADS = {
    "distilbert": ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
}


def _head_modules(mlm: nn.Module) -> tuple[nn.Module, str] | None:
    """The masked-LM model's head as one module, and the prefix of its checkpoint keys."""
    split = SPLIT_HEADS.get(getattr(mlm.config, "model_type", ""))
    if split is not None:
        return nn.Sequential(OrderedDict((n, mlm.get_submodule(n)) for n in split)), ""
    heads = [(n, m) for n, m in mlm.named_children() if n != mlm.base_model_prefix]
    if len(heads) != 1:  # an unknown layout: a fresh head rather than a guess at the order
        return None
    return heads[0][1], heads[0][0] + "."


class MLMHead(nn.Module):
    """Training-only LM head over the encoder's token states, decoder tied to its embeddings."""

    def __init__(self, head: nn.Module, decoder: TiedDecoder, pretrained: bool) -> None:
        super().__init__()
        self.head = head
        object.__setattr__(self, "_decoder", decoder)  # reached through self.head already
        self.pretrained = pretrained

    @classmethod
    def from_encoder(cls, encoder: Any, pretrained: bool = True) -> MLMHead:
        loaded = _load_pretrained_head(encoder) if pretrained else None
        if loaded is not None:
            head, decoder = loaded
        else:
            cfg = encoder.model.config
            emb = encoder.model.get_input_embeddings().weight
            if pretrained:
                log.warning(
                    "%s has no pretrained masked-LM head: training the MLM loss with a fresh head",
                    getattr(encoder.model, "name_or_path", "the encoder"),
                )
            head = _FreshHead(
                hidden=cfg.hidden_size,  # token states, not a Dense head's output
                emb_dim=emb.shape[1],
                vocab=emb.shape[0],
                eps=getattr(cfg, "layer_norm_eps", 1e-12),
                std=getattr(cfg, "initializer_range", 0.02),
            )
            decoder = head.decoder
        mlm = cls(head, decoder, pretrained=loaded is not None)
        mlm.tie(encoder)
        return mlm.to(device=encoder.device, dtype=encoder.model.dtype)

    def tie(self, encoder: Any) -> None:
        self._decoder.tie(encoder.model.get_input_embeddings())

    def forward(self, hidden: Tensor) -> Tensor:
        return self.head(hidden)


def mask_rows_keyed(
    input_ids: Tensor,
    maskable: Tensor,
    keys: list[tuple[int, ...]],
    *,
    seed: int,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """:func:`mask_tokens` with each row drawn from its own generator keyed by
    ``(seed, *keys[i])``, over the row's own length only: a row gets the same mask whatever batch,
    padding width, gradient-cache chunk or process it lands in, and after any resume."""
    inputs, labels = (
        input_ids.detach().cpu().clone(),
        torch.full_like(input_ids.cpu(), IGNORE_INDEX),
    )
    ok = maskable.detach().cpu().bool()
    lengths = ok.flip(1).int().argmax(1)  # trailing non-maskable positions (padding, [SEP])
    for i, key in enumerate(keys):
        width = int(ok.shape[1] - lengths[i]) if ok[i].any() else 0
        if width == 0:
            continue
        row_in, row_lab = mask_tokens(
            input_ids[i : i + 1, :width].cpu(),
            ok[i : i + 1, :width],
            mask_token_id=mask_token_id,
            vocab_size=vocab_size,
            generator=keyed_generator(seed, *key),
            probability=probability,
        )
        inputs[i, :width], labels[i, :width] = row_in[0], row_lab[0]
    return inputs.to(input_ids.device), labels.to(input_ids.device)


class MLMAuxiliary(nn.Module):
    """The MLM loss as a view of its objective: per-row sums the loop can run like embeddings.

    ``view(texts, keys)`` is a :class:`~contrasent.objectives.base.View` of mode ``"mlm"``;
    ``row_losses`` (the objective's ``embed`` for that mode) masks each text with its keyed
    generator, runs the encoder's transformer and the LM head, and returns ``[rows, 2]``: the
    cross-entropy SUM over the row's selected tokens and their count. ``part(out)`` normalises by
    the count of selected tokens over the whole GLOBAL batch (summed over processes): one
    process, several processes and any gradient-cache chunking give the same loss and gradients,
    the mean over selected tokens that SimCSE's ``do_mlm`` computes on one GPU.
    """

    MODE = "mlm"

    def __init__(
        self, probability: float = 0.15, seed: int = 0, pretrained_head: bool = True
    ) -> None:
        super().__init__()
        if not 0.0 < probability < 1.0:
            raise UserError(f"mlm_probability must be in (0, 1), got {probability}")
        self.probability = probability
        self.seed = seed
        self.pretrained_head = pretrained_head
        self.head: MLMHead | None = None

    def setup(self, encoder: Any) -> None:
        if encoder.tokenizer.mask_token_id is None:
            raise UserError(
                f"the MLM loss needs a tokenizer with a mask token; "
                f"{getattr(encoder.model, 'name_or_path', 'this model')}'s has none"
            )
        self.head = MLMHead.from_encoder(encoder, pretrained=self.pretrained_head)

    def view(self, texts: list[str], keys: list[tuple[int, ...]], name: str = "mlm") -> View:
        return View(name, list(texts), mode=self.MODE, keys=list(keys))

    def row_losses(self, encoder: Any, view: View, features: dict[str, Tensor]) -> Tensor:
        """``[rows, 2]``: the masked texts' MLM loss sums and counts, from their own pass."""
        inputs, labels = self.mask(encoder, view, features)
        hidden = encoder.model(**{**features, "input_ids": inputs}).last_hidden_state
        return self.token_sums(encoder, hidden, labels)

    def mask(self, encoder: Any, view: View, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(input_ids with masks, labels)`` of the view's rows, each keyed by its row key."""
        if self.head is None:
            raise RuntimeError("MLMAuxiliary.setup(encoder) must run before the optimizer is built")
        if view.keys is None:
            raise ValueError("an MLM view needs per-row keys")
        tok = encoder.tokenizer
        ids = features["input_ids"]
        maskable = maskable_positions(ids, features["attention_mask"], tok.all_special_ids)
        return mask_rows_keyed(
            ids,
            maskable,
            view.keys,
            seed=self.seed,
            mask_token_id=tok.mask_token_id,
            vocab_size=encoder.model.get_input_embeddings().weight.shape[0],
            probability=self.probability,
        )

    def token_sums(self, encoder: Any, hidden: Tensor, labels: Tensor) -> Tensor:
        """``[rows, 2]``: cross-entropy sum over each row's selected tokens (``labels`` not
        -100) of the LM head on the token states ``hidden`` [rows, T, H], and their count."""
        assert self.head is not None
        selected = labels != IGNORE_INDEX
        rows = selected.nonzero()[:, 0]
        self.head.tie(encoder)
        logits = self.head(hidden[selected])  # only the selected tokens: [M, V]
        with torch.autocast(hidden.device.type, enabled=False):
            ce = F.cross_entropy(fp32(logits), labels[selected], reduction="none")
        sums = torch.zeros(len(labels), device=hidden.device, dtype=ce.dtype).index_add(0, rows, ce)
        sums = sums + hidden.sum() * 0.0  # keeps the graph when nothing was drawn (tiny batch)
        counts = selected.sum(1).to(sums.dtype)
        return torch.stack([sums, counts], dim=1)

    def part(self, out: Tensor, weight: float) -> LossPart:
        """The globally normalised MLM loss of the local rows' ``[rows, 2]`` outputs.

        ``W * local_sum / global_count``: DDP averages gradients over the W processes, so the
        update is that of ``global_sum / global_count``, and so is the mean of the logged values.
        """
        count = all_reduce_sum(out[:, 1].detach().sum())
        scale = world_size() / count.clamp(min=1.0)
        return LossPart(out[:, 0].sum() * scale, weight)

    def config_dict(self) -> dict[str, Any]:
        return {"mlm_probability": self.probability, "mlm_seed": self.seed}
