"""Every architecture family the recipes name (BERT, RoBERTa, DistilBERT, XLM-R, MPNet), offline.

Tiny random models with real tokenizers of each family's kind (tests/families.py). The matrix runs
every objective for 2 steps through the real training entry on every family it supports and checks
the saved folder: sentence-transformers, a bare ``AutoModel`` pooled by hand and contrasent's
Encoder give the same embeddings. Around it: every pooling against a hand computation, the MLM
loss on the family's own head, TSDAE's tied decoder or its one-line refusal, position ids
(RoBERTa-style offset, ConSERT's shuffle) and token types.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from contrasent.augment.embedding import TokenShuffle
from contrasent.core.errors import UserError
from contrasent.data.documents import read_documents
from contrasent.model.encoder import POOLINGS, Encoder
from contrasent.objectives import build_objective
from contrasent.objectives.mlm import MLMHead
from contrasent.train.config import TrainConfig
from contrasent.train.loop import train
from families import FAMILIES

NAMES = list(FAMILIES)
PROBE = ["A man is playing a guitar.", "Two dogs run in the snow, far away from home.", "Hi"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second thread only adds start-up cost and contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ hand computations
def hand_embeddings(model, tokenizer, texts: list[str], pooling: str) -> np.ndarray:
    """Pooled embeddings of a bare HF model, computed here from its raw outputs."""
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    if "token_type_ids" not in _named_inputs(model):
        enc.pop("token_type_ids", None)
    with torch.no_grad():
        out = model.eval()(**enc, output_hidden_states=True)
    mask = enc["attention_mask"].unsqueeze(-1).float()
    hs = out.hidden_states

    def mean(tokens):
        return (tokens * mask).sum(1) / mask.sum(1)

    if pooling == "cls":
        pooler = model.pooler
        vec = torch.tanh(pooler.dense(out.last_hidden_state[:, 0]))
    elif pooling == "cls_before_pooler":
        vec = out.last_hidden_state[:, 0]
    elif pooling == "max":
        vec = out.last_hidden_state.masked_fill(mask == 0, -1e9).max(1).values
    elif pooling == "mean":
        vec = mean(out.last_hidden_state)
    else:
        a, b = {"avg_top2": (-1, -2), "avg_first_last": (1, -1), "avg_embeddings_last": (0, -1)}[
            pooling
        ]
        vec = mean((hs[a] + hs[b]) / 2)
    return vec.detach().numpy()


def _named_inputs(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def assert_loads_everywhere(folder: Path, pooling: str) -> np.ndarray:
    """Encoder, sentence-transformers and a bare AutoModel pooled by hand agree (< 1e-5)."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    ours = Encoder.from_pretrained(folder, device="cpu").encode(PROBE)
    st = SentenceTransformer(str(folder), device="cpu").encode(PROBE, convert_to_numpy=True)
    hand = hand_embeddings(
        AutoModel.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder)),
        PROBE, pooling,
    )  # fmt: skip
    np.testing.assert_allclose(st, ours, atol=1e-5, rtol=0)
    np.testing.assert_allclose(hand, ours, atol=1e-5, rtol=0)
    return ours


# ------------------------------------------------------------------ the fixture itself
KINDS = {"wordpiece": "WordPiece", "bpe": "BPE", "unigram": "Unigram"}


@pytest.mark.parametrize("name", NAMES)
def test_family_folders_load_as_hub_models(name, family_dir):
    from transformers import AutoModel, AutoTokenizer

    family, folder = FAMILIES[name], family_dir(name)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder))
    assert model.config.model_type == family.model_type and model.config.num_hidden_layers == 2
    assert type(tok.backend_tokenizer.model).__name__ == KINDS[family.tokenizer_kind]
    assert 1000 <= len(tok) <= 1300 and tok.mask_token_id is not None
    ids = tok(PROBE[0])["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids  # a real vocabulary, not a stub
    assert tok.decode(ids, skip_special_tokens=True).lower() == PROBE[0].lower()


# ------------------------------------------------------------------ poolings
@pytest.mark.parametrize("name", NAMES)
def test_every_pooling_equals_the_hand_computation(name, family_dir):
    from transformers import AutoModel, AutoTokenizer

    folder = family_dir(name)
    tok = AutoTokenizer.from_pretrained(str(folder))
    for pooling in POOLINGS:
        if pooling == "cls" and not FAMILIES[name].has_pooler:
            with pytest.raises(UserError, match="has no.*use 'cls_before_pooler'"):
                Encoder.from_pretrained(folder, pooling="cls", device="cpu")
            continue
        enc = Encoder.from_pretrained(folder, pooling=pooling, device="cpu")
        ours = enc.encode(PROBE)
        # a masked-LM checkpoint has no pooler weights: each load draws its own, so 'cls' is
        # checked against the encoder's model; every other pooling against a fresh AutoModel
        model = enc.model if pooling == "cls" else AutoModel.from_pretrained(str(folder))
        hand = hand_embeddings(model, tok, PROBE, pooling)
        np.testing.assert_allclose(ours, hand, atol=1e-5, rtol=0, err_msg=pooling)


# ------------------------------------------------------------------ the matrix
SNLI = {"kind": "nli", "split": "dev"}
NLI_PAIRS = {"kind": "nli_pairs", "split": "dev"}
RUNS = {  # objective cell -> (objective options, data, pooling)
    "simcse_unsup": ({"name": "simcse_unsup"}, {"kind": "text"}, "cls_before_pooler"),
    "simcse_unsup+mlm": (
        {"name": "simcse_unsup", "do_mlm": True, "mlm_probability": 0.3},
        {"kind": "text"},
        "avg_embeddings_last",
    ),
    "simcse_sup": ({"name": "simcse_sup", "mlp": False}, SNLI, "cls"),
    "pairs": ({"name": "pairs"}, {"kind": "pairs"}, "mean"),
    "tsdae": ({"name": "tsdae"}, {"kind": "text"}, "cls_before_pooler"),
    "declutr": ({"name": "declutr"}, {"kind": "documents"}, "mean"),
    "consert": ({"name": "consert"}, {"kind": "text"}, "mean"),  # feature cutoff + shuffle
    "consert_joint": ({"name": "consert_joint"}, NLI_PAIRS, "avg_first_last"),
    "consert_joint_adv": ({"name": "consert_joint_adv"}, NLI_PAIRS, "max"),
    "nli_softmax": ({"name": "nli_softmax"}, NLI_PAIRS, "avg_top2"),
}
REFUSED = {  # (cell, family) -> what the one-line UserError says
    ("tsdae", n): "has no causal-LM class" for n, f in FAMILIES.items() if not f.causal_lm
}
assert set(REFUSED) == {("tsdae", "distilbert"), ("tsdae", "mpnet")}
SPANS = {"min_span_len": 6, "max_span_len": 16}


@pytest.fixture(scope="module")
def data_paths(tmp_path_factory, shared_data, senteval_dir) -> dict[str, str]:
    wiki = shared_data / "corpus" / "wikitext-2-raw-test.txt"
    docs = [
        d.text
        for _, d in zip(range(16), read_documents(wiki, "wikitext", window_words=100), strict=False)
    ]
    documents = tmp_path_factory.mktemp("family_docs") / "docs.txt"
    documents.write_text("\n".join(docs) + "\n")
    return {
        "text": str(shared_data / "corpus" / "wiki1m-head.txt"),
        "pairs": str(shared_data / "pairs" / "wiki-split-tune.tsv"),
        "documents": str(documents),
        "nli": str(senteval_dir / "SNLI"),
        "nli_pairs": str(senteval_dir / "SNLI"),
    }


def run_config(folder: Path, out: Path, cell: str, paths: dict[str, str], pooling: str):
    objective, data, _ = RUNS[cell]
    data = {**data, "path": paths[data["kind"]], "max_seq_length": 32}
    if data["kind"] == "documents":
        data["options"] = SPANS
    return TrainConfig.from_dict({
        "model": {"name_or_path": str(folder), "pooling": pooling},
        "objective": dict(objective),
        "data": data,
        "train": {"batch_size": 8, "max_steps": 2, "lr": 1e-3, "seed": 0},
        "eval": {"at_end": False},
        "checkpoint": {"every_steps": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
        "output_dir": str(out),
    })  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cell", list(RUNS))
def test_matrix(cell, name, family_dir, data_paths, tmp_path, caplog):
    """2 steps of ``cell`` on family ``name``; the saved model loads everywhere the same."""
    folder, family = family_dir(name), FAMILIES[name]
    pooling = RUNS[cell][2]
    if pooling == "cls" and not family.has_pooler:
        pooling = "cls_before_pooler"  # 'cls' itself is refused: test_cls_without_a_pooler
    cfg = run_config(folder, tmp_path / "run", cell, data_paths, pooling)
    objective = build_objective(cfg.objective_name, **cfg.objective_options)
    if (cell, name) in REFUSED:
        with pytest.raises(UserError, match=REFUSED[cell, name]) as err:
            train(cfg, objective=objective)
        assert "\n" not in str(err.value)
        assert not (tmp_path / "run" / "final").exists()
        assert not (tmp_path / "run" / "metrics.jsonl").is_file() or not any(
            '"train"' in line for line in (tmp_path / "run" / "metrics.jsonl").open()
        )
        return
    start = Encoder.from_pretrained(folder, pooling=pooling, device="cpu").encode(PROBE)
    with caplog.at_level(logging.WARNING):
        result = train(cfg, objective=objective)
    assert result.steps == 2
    after = assert_loads_everywhere(result.final_dir, pooling)
    assert np.abs(after - start).max() > 1e-4  # it trained
    assert "no pretrained masked-LM head" not in caplog.text  # MLM: the family's own head
    if cell == "tsdae":  # tied: the decoder's word embeddings ARE the encoder's; it owns
        decoder = objective.decoder  # only cross-attention and the LM head's transform
        emb = decoder.hf_model.get_input_embeddings().weight
        assert decoder.tied and emb is decoder._encoder_model.get_input_embeddings().weight
        assert any("crossattention" in n for n in decoder.own)


@pytest.mark.parametrize("name", ["distilbert", "mpnet"])
def test_tsdae_untied_decoder_for_a_family_without_causal_lm(
    name, family_dir, data_paths, tmp_path
):
    """What the refusal points to: an untied decoder of another family (BERT, same hidden size)
    trains, its own tokenizer reading the targets, and the encoder saves as usual."""
    cfg = run_config(family_dir(name), tmp_path / "run", "tsdae", data_paths, "cls_before_pooler")
    cfg.objective.update(tie_decoder=False, decoder_name_or_path=str(family_dir("bert")))
    objective = build_objective("tsdae", **cfg.objective_options)
    result = train(cfg, objective=objective)
    assert not objective.decoder.tied and objective.decoder.hf_model.config.model_type == "bert"
    assert_loads_everywhere(result.final_dir, "cls_before_pooler")


def test_cls_without_a_pooler_is_refused_before_training(family_dir, data_paths, tmp_path):
    cfg = run_config(family_dir("distilbert"), tmp_path / "run", "simcse_sup", data_paths, "cls")
    with pytest.raises(UserError, match="DistilBertModel has none: use 'cls_before_pooler'"):
        train(cfg)
    assert not (tmp_path / "run" / "final").exists()


# ------------------------------------------------------------------ MLM heads
@pytest.mark.parametrize("name", NAMES)
def test_mlm_uses_the_family_head(name, family_dir):
    """The MLM loss's head is the checkpoint's own: its logits on the encoder's token states
    equal the family's masked-LM model's logits (RoBERTa ``lm_head``, BERT ``cls.predictions``,
    DistilBERT ``vocab_transform/vocab_layer_norm/vocab_projector``, ...)."""
    from transformers import AutoModelForMaskedLM

    folder = family_dir(name)
    enc = Encoder.from_pretrained(folder, pooling="mean", device="cpu").eval()
    head = MLMHead.from_encoder(enc)
    assert head.pretrained
    reference = AutoModelForMaskedLM.from_pretrained(str(folder)).eval()
    feats = enc.tokenize(PROBE)
    with torch.no_grad():
        hidden = enc.model(**feats).last_hidden_state
        ours = head.eval()(hidden)
        theirs = reference(**feats).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    family_head = reference.get_submodule(FAMILIES[name].mlm_head)
    assert any(type(m) is type(family_head) for m in head.modules())
    # the decoder is tied to the encoder's embeddings: no copy of them in the head
    assert not any(p is enc.model.get_input_embeddings().weight for p in head.parameters())
    assert head._decoder._embeddings is enc.model.get_input_embeddings()


@pytest.mark.parametrize("name", ["distilbert", "roberta"])
def test_a_checkpoint_without_its_head_gets_a_fresh_one(name, family_dir, tmp_path, caplog):
    """A bare encoder checkpoint (no LM head weights) trains the MLM loss with a fresh head, and
    says so, rather than loading a half-random family head."""
    from transformers import AutoModel, AutoTokenizer

    folder = family_dir(name)
    AutoModel.from_pretrained(str(folder)).save_pretrained(str(tmp_path))
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(tmp_path))
    enc = Encoder.from_pretrained(tmp_path, pooling="mean", device="cpu")
    with caplog.at_level(logging.WARNING, logger="contrasent.objectives.mlm"):
        head = MLMHead.from_encoder(enc)
    assert not head.pretrained and "no pretrained masked-LM head" in caplog.text


# ------------------------------------------------------------------ positions and token types
class FixedPositions:
    """An augmentation that hands the model given position ids (a drawn shuffle, replayed)."""

    def __init__(self, position_ids: torch.Tensor) -> None:
        self.position_ids = position_ids

    def positions(self, position_ids, attention_mask):
        return self.position_ids


@pytest.mark.parametrize("name", NAMES)
def test_default_and_shuffled_position_ids(name, family_dir):
    """The encoder's position ids are the model's own (RoBERTa-style: ``padding_idx + 1`` on,
    padding at ``padding_idx``), and ConSERT's token shuffle is what it means: with mean pooling,
    shuffled positions give the embedding of the tokens written in the shuffled order."""
    family = FAMILIES[name]
    enc = Encoder.from_pretrained(family_dir(name), pooling="mean", device="cpu").eval()
    feats = enc.tokenize(PROBE)
    mask = feats["attention_mask"]
    pos = enc.position_ids(feats)
    lengths = mask.sum(1)
    for row, n in enumerate(lengths.tolist()):
        expected = torch.arange(n) + family.position_offset
        assert pos[row, :n].tolist() == expected.tolist()
        if family.position_offset:  # padding sits at padding_idx = offset - 1
            assert set(pos[row, n:].tolist()) <= {family.position_offset - 1}
    with torch.no_grad():
        plain = enc(feats)
        torch.testing.assert_close(enc(feats, augment=FixedPositions(pos)), plain)

    torch.manual_seed(3)
    shuffled = TokenShuffle().positions(pos, mask)
    assert not torch.equal(shuffled, pos)
    for row, n in enumerate(lengths.tolist()):
        assert sorted(shuffled[row, :n].tolist()) == pos[row, :n].tolist()
        assert torch.equal(shuffled[row, n:], pos[row, n:])
    # the same tokens written in the shuffled order, natural positions
    reordered = feats["input_ids"].clone()
    for row, n in enumerate(lengths.tolist()):
        slots = shuffled[row, :n] - family.position_offset
        reordered[row, slots] = feats["input_ids"][row, :n]
    with torch.no_grad():
        shuffled_emb = enc(feats, augment=FixedPositions(shuffled))
        written = enc({**feats, "input_ids": reordered})
    torch.testing.assert_close(shuffled_emb, written, atol=1e-5, rtol=0)
    assert (shuffled_emb - plain).abs().max() > 1e-4


def _forward_keys(model) -> list[set[str]]:
    calls: list[set[str]] = []
    model.register_forward_pre_hook(lambda _m, _a, kw: calls.append(set(kw)), with_kwargs=True)
    return calls


@pytest.mark.parametrize("name", NAMES)
def test_token_type_ids_only_for_models_that_take_them(name, family_dir):
    family = FAMILIES[name]
    enc = Encoder.from_pretrained(family_dir(name), pooling="mean", device="cpu")
    calls = _forward_keys(enc.model)
    enc(enc.tokenize(PROBE))
    enc.encode(PROBE)
    assert len(calls) == 2
    sent = all("token_type_ids" in c for c in calls)
    assert sent == (family.name == "bert")
    if not family.has_token_types:
        assert not any("token_type_ids" in c for c in calls)


def test_a_bert_tokenizer_on_distilbert_sends_no_token_types(family_dir, tmp_path):
    """Some DistilBERT / MPNet folders ship a BERT tokenizer, which returns token_type_ids;
    the model has no token types, so the encoder must not pass them (in every forward: the
    training tokenize, encode, and the MLM pass)."""
    from transformers import BertTokenizer

    folder = tmp_path / "distilbert-bert-tok"
    shutil.copytree(family_dir("distilbert"), folder)
    BertTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    enc = Encoder.from_pretrained(folder, pooling="mean", device="cpu")
    assert "token_type_ids" in enc.tokenizer(PROBE)  # the tokenizer does return them
    calls = _forward_keys(enc.model)
    feats = enc.tokenize(PROBE)
    assert "token_type_ids" not in feats
    enc(feats)
    enc.encode(PROBE)
    assert calls and not any("token_type_ids" in c for c in calls)
