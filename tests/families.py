"""Tiny random models of every architecture family the recipes name, built offline in seconds.

Each family gets a real tokenizer of its own kind, trained with the `tokenizers` library on a
slice of the shared Wikipedia corpus (WordPiece for BERT / DistilBERT / MPNet, byte-level BPE for
RoBERTa, Unigram for XLM-R), wrapped in the family's transformers tokenizer class (which sets the
family's normaliser, pre-tokenizer and special-token template), and a 2-layer randomly initialised
model saved with ``save_pretrained`` as the checkpoint class the hub ships (BERT with its
pre-training heads and pooler, the others as masked LMs): the code under test loads the folder by
path exactly as it loads a hub model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

VOCAB_SIZE = 1200
CORPUS_LINES = 1000  # Unigram training is the slow one: ~0.3 s on 1000 lines
SIZES = dict(hidden=32, layers=2, heads=2, intermediate=64, positions=128)


@dataclass(frozen=True)
class Family:
    """One architecture family: its model type, tokenizer kind and what it has or lacks."""

    name: str
    model_type: str
    tokenizer_kind: str  # wordpiece | bpe | unigram
    has_pooler: bool
    has_token_types: bool  # the model takes token_type_ids
    position_offset: int  # first real position id (RoBERTa-style: padding_idx + 1)
    causal_lm: bool  # has a causal-LM class with cross-attention (TSDAE's tied decoder)
    mlm_head: str  # the masked-LM checkpoint's head module


FAMILIES = {
    f.name: f
    for f in (
        Family("bert", "bert", "wordpiece", True, True, 0, True, "cls"),
        Family("roberta", "roberta", "bpe", True, True, 2, True, "lm_head"),
        Family("distilbert", "distilbert", "wordpiece", False, False, 0, False, "vocab_projector"),
        Family("xlmr", "xlm-roberta", "unigram", True, True, 2, True, "lm_head"),
        Family("mpnet", "mpnet", "wordpiece", True, False, 2, False, "lm_head"),
    )
}

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MPNET_SPECIALS = ["<s>", "<pad>", "</s>", "[UNK]"]  # + <mask> last, as mpnet-base
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # + <mask> last, as xlm-roberta-base


def corpus_lines(corpus: Path, n: int = CORPUS_LINES) -> list[str]:
    lines = corpus.read_text(encoding="utf-8").splitlines()
    return [t.strip() for t in lines[:n] if t.strip()]


def _wordpiece_vocab(lines: list[str], specials: list[str]) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token=specials[BERT_SPECIALS.index("[UNK]")]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials)
    tok.train_from_iterator(lines, trainer)
    return tok.get_vocab()


def _bpe_vocab(lines: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=ROBERTA_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(lines, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _unigram_vocab(lines: list[str]) -> list[tuple[str, float]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=XLMR_SPECIALS, unk_token="<unk>"
    )
    tok.train_from_iterator(lines, trainer)
    vocab = [(p, float(s)) for p, s in json.loads(tok.to_str())["model"]["vocab"]]
    return [*vocab, ("<mask>", 0.0)]


def build_tokenizer(family: Family, lines: list[str]):
    """The family's transformers tokenizer over a vocabulary trained on ``lines``."""
    import transformers as T

    if family.name in ("bert", "distilbert"):
        cls = T.BertTokenizer if family.name == "bert" else T.DistilBertTokenizer
        return cls(
            vocab=_wordpiece_vocab(lines, BERT_SPECIALS), model_max_length=SIZES["positions"]
        )
    if family.name == "mpnet":
        vocab = _wordpiece_vocab(lines, MPNET_SPECIALS)
        vocab["<mask>"] = len(vocab)
        return T.MPNetTokenizer(vocab=vocab, model_max_length=SIZES["positions"])
    if family.name == "roberta":
        vocab, merges = _bpe_vocab(lines)
        return T.RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=SIZES["positions"])
    return T.XLMRobertaTokenizer(vocab=_unigram_vocab(lines), model_max_length=SIZES["positions"])


def build_model(family: Family, tokenizer, seed: int = 0, **overrides):
    """A randomly initialised checkpoint of the family (the class the hub ships)."""
    import torch
    import transformers as T

    h, n, heads, inter = SIZES["hidden"], SIZES["layers"], SIZES["heads"], SIZES["intermediate"]
    positions = SIZES["positions"] + family.position_offset
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if family.name == "distilbert":
        cfg = T.DistilBertConfig(
            dim=h, n_layers=n, n_heads=heads, hidden_dim=inter,
            max_position_embeddings=positions, **common,
        )  # fmt: skip
    else:
        config_cls = {
            "bert": T.BertConfig,
            "roberta": T.RobertaConfig,
            "xlmr": T.XLMRobertaConfig,
            "mpnet": T.MPNetConfig,
        }[family.name]
        extra = {"type_vocab_size": 1} if family.name in ("roberta", "xlmr") else {}
        if family.name != "bert":
            ids = tokenizer.convert_tokens_to_ids([tokenizer.bos_token, tokenizer.eos_token])
            extra.update(bos_token_id=ids[0], eos_token_id=ids[1])
        cfg = config_cls(
            hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
            intermediate_size=inter, max_position_embeddings=positions, **common, **extra,
        )  # fmt: skip
    for key, value in overrides.items():
        setattr(cfg, key, value)
    model_cls = {
        "bert": T.BertForPreTraining,
        "roberta": T.RobertaForMaskedLM,
        "distilbert": T.DistilBertForMaskedLM,
        "xlmr": T.XLMRobertaForMaskedLM,
        "mpnet": T.MPNetForMaskedLM,
    }[family.name]
    torch.manual_seed(seed)
    return model_cls(cfg)


def build_family(family: Family, path: Path, corpus: Path, seed: int = 0, **overrides) -> Path:
    """Save the family's tiny model and tokenizer as an ordinary Hugging Face folder at ``path``."""
    tokenizer = build_tokenizer(family, corpus_lines(corpus))
    model = build_model(family, tokenizer, seed, **overrides)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
