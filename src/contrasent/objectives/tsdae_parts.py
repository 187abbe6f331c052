"""TSDAE's decoder and reconstruction loss (Wang, Reimers & Gurevych, 2021), engine-independent.

The encoder embeds the NOISY sentence; a transformer decoder reconstructs the ORIGINAL sentence
token by token (teacher forcing) while its cross-attention sees only the sentence vector, a memory
of length one. As sentence-transformers' ``DenoisingAutoEncoderLoss`` does, the decoder is the
checkpoint's architecture loaded as a causal LM with cross-attention (``is_decoder=True``,
``add_cross_attention=True``), its input is the target ids without the last position and its
labels the target ids without the first ([CLS]/<s> is the start token, [SEP]/</s> is predicted).

Tying (the default, the paper's best): every decoder parameter that has an encoder counterpart of
the same name and shape IS the encoder's parameter object (one parameter set: an update through the
decoder moves the encoder). Only cross-attention and the LM head's transform (and bias) belong to
the decoder. Tying is per parameter, not per module: the decoder keeps its own modules, whose
self-attention is causal (transformers 5 stores ``is_causal`` on the attention module, so sharing
the encoder's modules would silently make the decoder bidirectional).

The HF decoder model is held as an unregistered reference (as ``objectives/mlm.py`` holds the
input embeddings), and only its own parameters are registered, so the objective's parameters and
state dict hold no encoder parameter: no duplicate in the optimizer, nothing of the encoder in a
resume checkpoint; only the encoder is ever saved. Untied (``tie=False``) the decoder is a separate
model given by name or path and fully registered.
"""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrasent.core.errors import UserError
from contrasent.model.encoder import SHARED_LOOKUP_TYPES
from contrasent.model.passes import length_buckets, padded_position_ids, rows_of
from contrasent.objectives.functional import fp32

log = logging.getLogger(__name__)


class TSDAEDecoder(nn.Module):
    """A causal LM with cross-attention over a one-vector memory; ``forward -> logits [B, T, V]``.

    Attributes: ``tokenizer`` (tokenizes the reconstruction targets), ``tied`` (bool),
    ``tied_names`` (decoder parameter name -> encoder parameter name).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        encoder_model: nn.Module | None = None,
        tied_names: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)
        self.tokenizer = tokenizer
        self.tied_names = dict(tied_names or {})
        self.tied = encoder_model is not None
        if self.tied:
            object.__setattr__(self, "_encoder_model", encoder_model)
            self.tie(encoder_model)
            enc_ids = {id(p) for p in encoder_model.parameters()}
            own = [(n, p) for n, p in model.named_parameters() if id(p) not in enc_ids]
            self.own = nn.ParameterDict({n.replace(".", "__"): p for n, p in own})
        else:
            self.model = model  # registered: every decoder parameter is its own

    @property
    def hf_model(self) -> nn.Module:
        """The transformers causal LM (tied parameters are the encoder's)."""
        return self._model

    def held_modules(self) -> list[nn.Module]:
        """The tied HF decoder, which runs here unregistered (``train.fast_dropout`` switches
        its dropout as it does the registered modules')."""
        return [self._model] if self.tied else []

    def tie(self, encoder_model: nn.Module) -> None:
        """Point every tied decoder parameter (and its aliases, e.g. the LM head's weight) at the
        encoder's current parameter object. Idempotent; cheap when already tied."""
        if not self.tied:
            return
        object.__setattr__(self, "_encoder_model", encoder_model)
        enc = dict(encoder_model.named_parameters())
        swap: dict[int, nn.Parameter] = {}
        for dec_name, enc_name in self.tied_names.items():
            old = self._model.get_parameter(dec_name)
            if old is not enc[enc_name]:
                swap[id(old)] = enc[enc_name]
        if not swap:
            return
        for module in self._model.modules():
            for attr, param in list(module._parameters.items()):
                if param is not None and id(param) in swap:
                    setattr(module, attr, swap[id(param)])

    def _sync(self, device: torch.device) -> None:
        """Follow the encoder (identity), the objective's train/eval mode and device."""
        if self.tied:
            self.tie(self._encoder_model)
        if self._model.training != self.training:
            self._model.train(self.training)
        buf = next(self._model.buffers(), None)
        if buf is not None and buf.device != device:
            self._model.to(device)  # unregistered buffers (position ids) do not follow .to()

    def forward(self, input_ids: Tensor, attention_mask: Tensor, memory: Tensor) -> Tensor:
        """Logits for decoder inputs ``[B, T]`` attending to ``memory [B, 1, H]``."""
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.head(self.states(features, memory[:, 0]))

    def inputs(self, input_ids: Tensor) -> dict[str, Tensor]:
        """The decoder's inputs for ``input_ids [B, T]``: the word embeddings looked up (with
        RoBERTa-style position ids made explicit) for the model types whose lookup is tested
        to be shared (``SHARED_LOOKUP_TYPES``), so that length buckets take their rows of one
        lookup (its backward writes a dense [vocab, H] gradient per call); else the ids."""
        self._sync(input_ids.device)
        if getattr(self._model.config, "model_type", None) not in SHARED_LOOKUP_TYPES:
            return {"input_ids": input_ids}
        out = {"inputs_embeds": self._model.get_input_embeddings()(input_ids)}
        padding_idx = getattr(self._model.base_model.embeddings, "padding_idx", None)
        if padding_idx is not None:
            out["position_ids"] = padded_position_ids(input_ids, padding_idx)
        return out

    def states(self, features: dict[str, Tensor], memory: Tensor) -> Tensor:
        """What :meth:`head` turns into logits, ``[B, T, H]``, for ``features`` (an
        ``attention_mask`` and :meth:`inputs`) attending to ``memory [B, H]``: the body's last
        token states; the logits themselves for a model whose head is not one module."""
        mask = features["attention_mask"]
        self._sync(mask.device)
        ones = torch.ones(len(memory), 1, dtype=mask.dtype, device=memory.device)
        kw = dict(encoder_hidden_states=memory[:, None], encoder_attention_mask=ones)
        whole = self._head is None
        model = self._model if whole else self._model.base_model
        out = model(**features, **kw, use_cache=False, return_dict=True)
        return out.logits if whole else out.last_hidden_state

    def head(self, states: Tensor) -> Tensor:
        """Logits ``[..., V]`` of token states (the LM head: BERT's ``cls``, RoBERTa's
        ``lm_head``), so that it may run on the real tokens alone."""
        return states if self._head is None else self._head(states)

    @property
    def _head(self) -> nn.Module | None:
        """The causal LM's one module besides its body (None where it has several, ELECTRA)."""
        body = self._model.base_model
        rest = [m for m in self._model.children() if m is not body]
        return rest[0] if len(rest) == 1 else None


# -------------------------------------------------------------------- checks
def _model_label(model: Any) -> str:
    return getattr(model, "name_or_path", "") or type(model).__name__


def check_decoder_architecture(config: Any, name: str) -> type:
    """The causal-LM class for ``config``; UserError if it has none or no cross-attention."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise UserError(
            f"TSDAE: model {name!r} ({config.model_type}) has no causal-LM class in transformers, "
            "so it cannot be the decoder; use a BERT/RoBERTa/XLM-R/ELECTRA style model, or an "
            "untied decoder (decoder_name_or_path) of such an architecture and the same hidden size"
        ) from None
    if "encoder_hidden_states" not in inspect.signature(cls.forward).parameters:
        raise UserError(
            f"TSDAE: model {name!r}: its causal-LM class {cls.__name__} has no cross-attention "
            "(encoder_hidden_states), which the decoder needs to read the sentence vector"
        )
    return cls


def check_decoder_tokenizer(tokenizer: Any, name: str) -> None:
    """The decoder needs a padding token and a start token ([CLS]/<s>) before the first word."""
    if tokenizer.pad_token_id is None:
        raise UserError(f"TSDAE: the tokenizer of {name!r} has no padding token")
    ids = tokenizer("a")["input_ids"]
    text = tokenizer("a", add_special_tokens=False)["input_ids"]
    # the first id must be one the tokenizer adds (an unknown word's [UNK] is special too)
    if not ids or ids[0] not in set(tokenizer.all_special_ids) or ids[:1] == text[:1]:
        raise UserError(
            f"TSDAE: the tokenizer of {name!r} adds no start token ([CLS] or <s>) before the text, "
            "so the decoder could not predict a sentence's first word"
        )


def noise_mask_token(encoder: Any) -> str:
    """The mask token, checked to come back as one token through the encoder's tokenize()."""
    tok = encoder.tokenizer
    label = getattr(encoder.model, "name_or_path", "") or "the model"
    if tok.mask_token is None:
        raise UserError(f"TSDAE noise 'mask': the tokenizer of {label!r} has no mask token")
    ids = encoder.tokenize([f"a {tok.mask_token} b"])["input_ids"][0].tolist()
    if tok.mask_token_id not in ids:  # e.g. lowercased by the encoder before tokenizing
        raise UserError(
            f"TSDAE noise 'mask': {label!r} does not read its mask token {tok.mask_token!r} back "
            "as one token (the encoder lowercases its input?); use noise 'delete'"
        )
    return tok.mask_token


def check_target_length(decoder: TSDAEDecoder, length: int) -> None:
    """The decoder must have a position for every target token (RoBERTa-style models have
    max_position_embeddings 514 but 512 usable positions: the tokenizer's limit says so)."""
    positions = getattr(decoder.hf_model.config, "max_position_embeddings", None)
    tokens = getattr(decoder.tokenizer, "model_max_length", None)
    found = [x for x in (positions, tokens) if isinstance(x, int) and 0 < x < 1_000_000]
    if found and length > min(found):
        raise UserError(
            f"TSDAE: max_target_length {length} exceeds what the decoder can read "
            f"({min(found)} tokens); set objective.max_target_length <= {min(found)}"
        )


# -------------------------------------------------------------------- building
def _decoder_config(config: Any) -> Any:
    cfg = copy.deepcopy(config)
    cfg.is_decoder = True
    cfg.add_cross_attention = True
    cfg.use_cache = False
    return cfg


def _load_causal_lm(source: str | None, config: Any, dtype: torch.dtype) -> nn.Module:
    """``AutoModelForCausalLM`` from ``source`` with ``config``; from the config alone if the
    source has no weights (an encoder built in memory)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # cross-attention is missing from every encoder checkpoint
    try:
        if source:
            try:
                model, info = AutoModelForCausalLM.from_pretrained(
                    source, config=config, dtype=dtype, output_loading_info=True
                )
                fresh = sorted(k for k in info.get("missing_keys", ()) if "cross" not in k)
                if fresh:  # cross-attention is always new; an LM head may be too
                    log.warning("%s has no pretrained LM head: the decoder's %s start random",
                                source, ", ".join(fresh))  # fmt: skip
                return model
            except OSError as err:
                log.warning("no decoder weights at %s (%s): its LM head starts random", source, err)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)


def _tie_names(decoder: nn.Module, encoder_model: nn.Module) -> dict[str, str]:
    """Decoder parameter name -> encoder parameter name, for the base model's parameters whose
    name and shape the encoder shares (everything but cross-attention and the LM head)."""
    prefix = getattr(decoder, "base_model_prefix", "")
    base = getattr(decoder, prefix, None) if prefix else None
    base = base if isinstance(base, nn.Module) else decoder
    enc = dict(encoder_model.named_parameters())
    outer = f"{prefix}." if base is not decoder else ""
    return {
        outer + n: n for n, p in base.named_parameters() if n in enc and enc[n].shape == p.shape
    }


def build_decoder(
    encoder: Any, decoder_name_or_path: str | None = None, tie: bool = True
) -> TSDAEDecoder:
    """TSDAE's decoder for ``encoder`` (a :class:`contrasent.model.encoder.Encoder`).

    ``tie=True``: the encoder checkpoint's architecture as a causal LM with cross-attention, tied
    to the encoder (the LM head's transform comes from the checkpoint when it has one, e.g.
    bert-base-uncased, else it starts random; cross-attention always starts random).
    ``tie=False``: a separate decoder loaded from ``decoder_name_or_path`` (same hidden size as
    the sentence embedding; its own tokenizer tokenizes the targets). Raises UserError, before
    anything is trained, for a model or tokenizer the decoder cannot use.
    """
    name = _model_label(encoder.model)
    if tie and decoder_name_or_path is not None:
        raise UserError(
            "TSDAE: decoder_name_or_path is for an untied decoder (tie false); a tied decoder is "
            "always the encoder's own architecture"
        )
    if not tie and decoder_name_or_path is None:
        raise UserError("TSDAE: an untied decoder needs decoder_name_or_path")
    if tie:
        source, config, tokenizer = name, encoder.model.config, encoder.tokenizer
    else:
        from transformers import AutoConfig, AutoTokenizer

        source = str(decoder_name_or_path)
        try:
            config = AutoConfig.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise UserError(f"TSDAE: cannot load decoder {source!r}: {err}") from err
    check_decoder_architecture(config, source)
    check_decoder_tokenizer(tokenizer, source)
    if config.hidden_size != encoder.hidden_size:
        raise UserError(
            f"TSDAE: the sentence embedding has size {encoder.hidden_size} but the decoder "
            f"{source!r} has hidden size {config.hidden_size}; they must match"
        )
    has_weights = not tie or bool(getattr(encoder.model, "name_or_path", ""))
    model = _load_causal_lm(
        source if has_weights else None, _decoder_config(config), encoder.model.dtype
    )
    model = model.to(encoder.device)
    if not tie:
        return TSDAEDecoder(model, tokenizer)
    names = _tie_names(model, encoder.model)
    if not names:
        raise UserError(f"TSDAE: no decoder parameter of {name!r} matches the encoder's to tie")
    untied = sorted(set(dict(encoder.model.named_parameters())) - set(names.values()))
    log.info("TSDAE: %d parameters tied; encoder-only: %s", len(names), untied)
    return TSDAEDecoder(model, tokenizer, encoder_model=encoder.model, tied_names=names)


# -------------------------------------------------------------------- targets and loss
def tokenize_targets(
    tokenizer: Any, texts: list[str], max_length: int, lowercase: bool = False
) -> tuple[dict[str, Tensor], Tensor]:
    """Right-padded target features truncated to ``max_length`` tokens, and a bool ``[rows]``
    saying which texts were longer (and lost their tail).

    The check tokenizes once more at ``max_length + 1`` (a row that fills it was longer) rather
    than untruncated: a very long line costs no more, and the tokenizer does not warn."""
    texts = [t.lower() for t in texts] if lowercase else list(texts)
    kw = dict(truncation=True, padding_side="right")
    features = tokenizer(texts, padding=True, max_length=max_length, return_tensors="pt", **kw)
    probe = tokenizer(texts, max_length=max_length + 1, **kw)["input_ids"]
    truncated = torch.tensor([len(ids) > max_length for ids in probe], dtype=torch.bool)
    return dict(features), truncated


def shift_targets(
    input_ids: Tensor, attention_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Teacher forcing: ``(decoder_input_ids, decoder_mask, labels, label_mask)``.

    Inputs are positions ``0..T-2``, labels positions ``1..T-1`` (sentence-transformers' shift);
    a label counts when it and the position predicting it are real tokens (padding ignored).
    """
    dec_mask = attention_mask[:, :-1]
    label_mask = attention_mask[:, 1:].bool() & dec_mask.bool()
    return input_ids[:, :-1], dec_mask, input_ids[:, 1:], label_mask


def reconstruction_row_losses(
    decoder: TSDAEDecoder,
    sentence_embeddings: Tensor,
    target_features: dict[str, Tensor],
    buckets: int = 1,
) -> Tensor:
    """``[rows, 2]``: per sentence, the sum of its token cross-entropies and its token count,
    reconstructing the targets from ``sentence_embeddings [B, H]`` (the memory ``[B, 1, H]``).
    Row ``i`` depends on sentence ``i`` alone, so rows may be computed in any chunks and summed
    (normalised by the global token count over processes and gradient-cache chunks).

    The decoder and its LM head ([H, vocab] per token: for MiniLM more than the 6 layers) are
    most of a TSDAE step, so padding is kept out of both: ``buckets`` > 1
    (``train.length_buckets``) runs the decoder over rows of similar target length, each pass
    padded only to its own longest (targets are right-padded and the decoder causal: trimming
    trailing pads changes no real token's state), and the LM head and cross-entropy run once,
    on the real label positions of all rows."""
    device = sentence_embeddings.device
    ids = target_features["input_ids"].to(device)
    mask = target_features["attention_mask"].to(device)
    dec_ids, dec_mask, labels, label_mask = shift_targets(ids, mask)  # [B, T - 1] each
    width, lengths = label_mask.shape[1], label_mask.sum(dim=1)
    if buckets > 1:
        parts = length_buckets(lengths.tolist(), buckets)
    else:
        parts = [(list(range(len(ids))), int(lengths.max()) if len(ids) else 0)]
    features = {"attention_mask": dec_mask, **decoder.inputs(dec_ids)}
    states, gold, owner = [], [], []
    for rows, longest in parts:
        index = torch.as_tensor(rows, device=device)
        part = {k: rows_of(v, index, width, longest) for k, v in features.items()}
        keep = rows_of(label_mask, index, width, longest)  # [b, t]
        states.append(decoder.states(part, sentence_embeddings.index_select(0, index))[keep])
        gold.append(rows_of(labels, index, width, longest)[keep])
        owner.append(index[:, None].expand_as(keep)[keep])
    # (picking the real labels by a mask syncs with a GPU once per pass, as splitting the rows
    # by length does; the head on padding cost more)
    logits = decoder.head(torch.cat(states))  # [real labels, V]
    # float32 (or float64) even under autocast
    with torch.autocast(logits.device.type, enabled=False):
        ce = F.cross_entropy(fp32(logits), torch.cat(gold), reduction="none")
    sums = ce.new_zeros(len(ids)).index_add(0, torch.cat(owner), ce)
    return torch.stack([sums, lengths.to(ce.dtype)], dim=1)


def reconstruction_loss(
    decoder: TSDAEDecoder, sentence_embeddings: Tensor, target_features: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """``(sum of token cross-entropies, number of tokens)`` over the batch
    (:func:`reconstruction_row_losses` summed; the count as a long 0-dim tensor)."""
    rows = reconstruction_row_losses(decoder, sentence_embeddings, target_features)
    return rows[:, 0].sum(), rows[:, 1].sum().long()


def reconstruction_loss_mean(
    decoder: TSDAEDecoder, sentence_embeddings: Tensor, target_features: dict[str, Tensor]
) -> Tensor:
    """Mean token cross-entropy of the local batch (what sentence-transformers reports)."""
    loss_sum, n_tokens = reconstruction_loss(decoder, sentence_embeddings, target_features)
    return loss_sum / n_tokens.clamp(min=1)
