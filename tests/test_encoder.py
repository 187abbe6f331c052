"""Encoder: poolings vs hand computation, ST save/load equality, error cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import contrasent.model.encoder
from conftest import build_tiny_bert
from contrasent.core.errors import UserError
from contrasent.model.encoder import Encoder, pool
from contrasent.model.st_layout import write_st

SENTENCES = [
    "A man is playing a guitar.",
    "",
    "   ",
    "\t\n",
    "Ünïcödé: naïve café, Zürich, São Paulo.",
    "日本語の文章です。",
    "Привет, как дела?",
    "emoji 🙂🚀 and symbols ∑∫√ ≠ ≤",
    "a",
    "The quick brown fox jumps over the lazy dog. " * 60,  # truncated
    "word " * 300,
    "Two dogs run through a field.",
    "A woman is slicing an onion.",
    "ALL CAPS SENTENCE WITH NUMBERS 12345 67890",
    "mixed\ttabs and  double  spaces",
    "short",
    "What is the capital of France?",
    "x" * 2000,
    "Is this the real life? Is this just fantasy?",
    "العربية نص قصير",
    "한국어 문장",
    "Ελληνικά κείμενο",
    "A man is playing a flute.",
    "A cat sits on a mat; the mat is red, the cat is black.",
]


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    # 3 layers so avg_top2 (layers 2+3) and avg_first_last (layers 1+3) differ.
    return build_tiny_bert(tmp_path_factory.mktemp("tiny3"), minilm_dir, num_hidden_layers=3)


def _hand_pool(pooling: str, model, feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Pool with explicit per-sentence loops over real tokens (the reference)."""
    out = model(**feats, output_hidden_states=True)
    hs, mask = out.hidden_states, feats["attention_mask"]
    rows = []
    for b in range(mask.shape[0]):
        real = [t for t in range(mask.shape[1]) if mask[b, t] == 1]
        if pooling == "cls":
            w, bias = model.pooler.dense.weight, model.pooler.dense.bias
            rows.append(torch.tanh(w @ hs[-1][b, 0] + bias))
        elif pooling == "cls_before_pooler":
            rows.append(hs[-1][b, 0])
        elif pooling == "max":
            rows.append(torch.stack([hs[-1][b, t] for t in real]).max(dim=0).values)
        else:
            layers = {"mean": [-1], "avg_top2": [-1, -2], "avg_first_last": [1, -1],
                      "avg_embeddings_last": [0, -1]}[pooling]  # fmt: skip
            tok = [sum(hs[i][b, t] for i in layers) / len(layers) for t in real]
            rows.append(sum(tok) / len(real))
    return torch.stack(rows)


@pytest.mark.parametrize("pooling", Encoder.POOLINGS)
def test_pooling_matches_hand_computation(tiny3: Path, pooling: str) -> None:
    enc = Encoder.from_pretrained(tiny3, pooling=pooling, device="cpu").eval()
    feats = enc.tokenize(["a short one", "a somewhat longer sentence with padding", ""])
    assert feats["attention_mask"].sum(1).tolist() != [feats["attention_mask"].shape[1]] * 3
    with torch.no_grad():
        got = enc(feats)
        want = _hand_pool(pooling, enc.model, feats)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_avg_poolings_differ_and_normalize(tiny3: Path) -> None:
    texts = ["one sentence", "another, longer sentence here"]
    top2 = Encoder.from_pretrained(tiny3, pooling="avg_top2", device="cpu").encode(texts)
    first_last = Encoder.from_pretrained(tiny3, pooling="avg_first_last", device="cpu").encode(
        texts
    )
    assert np.abs(top2 - first_last).max() > 1e-3
    normed = Encoder.from_pretrained(tiny3, normalize=True, device="cpu").encode(texts)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)


def test_embedding_layer_variant_differs_from_simcse_first_last(tiny3: Path) -> None:
    texts = ["one sentence", "another, longer sentence here"]
    a = Encoder.from_pretrained(tiny3, pooling="avg_first_last", device="cpu").encode(texts)
    b = Encoder.from_pretrained(tiny3, pooling="avg_embeddings_last", device="cpu").encode(texts)
    assert np.abs(a - b).max() > 1e-3


class _Reverse:
    """A deterministic view: reversed positions over each row's real tokens, token 0 zeroed."""

    def positions(self, position_ids, attention_mask):
        out = position_ids.clone()
        for i, n in enumerate(attention_mask.sum(1).tolist()):
            out[i, :n] = position_ids[i, :n].flip(0)
        return out

    def embeddings(self, output, attention_mask):
        out = output.clone()
        out[:, 0] = 0.0
        return out


def test_augmentation_hook_acts_on_positions_and_embedding_output(tiny3: Path) -> None:
    """By hand: the embeddings module run with the rewritten positions, its output edited, then
    the transformer layers and mean pooling; padding keeps its positions and is never pooled."""
    enc = Encoder.from_pretrained(tiny3, pooling="mean", device="cpu").eval()
    feats = enc.tokenize(["a short one", "a somewhat longer sentence with padding"])
    mask = feats["attention_mask"]
    aug = _Reverse()
    pos = aug.positions(enc.position_ids(feats), mask)
    assert torch.equal(pos[0, mask[0].sum() :], enc.position_ids(feats)[0, mask[0].sum() :])
    with torch.no_grad():
        got = enc(feats, augment=aug)
        emb = enc.model.embeddings(
            input_ids=feats["input_ids"], token_type_ids=feats["token_type_ids"], position_ids=pos
        )
        emb = aug.embeddings(emb, mask)
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        hidden = enc.model.encoder(emb, attention_mask=additive)[0]
        m = mask[..., None].float()
        want = (hidden * m).sum(1) / m.sum(1)
        plain = enc(feats)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-3
    handles = enc.embedding_layer()._forward_hooks
    assert not handles  # the hook is removed after the forward


def test_default_position_ids_follow_the_model(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """BERT counts from 0; RoBERTa-style models from padding_idx + 1, padding at padding_idx
    (what the model computes itself when no position ids are passed)."""
    from transformers import RobertaConfig, RobertaModel

    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu")
    feats = enc.tokenize(["a b c", "a"])
    assert enc.position_ids(feats)[0].tolist() == list(range(feats["input_ids"].shape[1]))
    cfg = RobertaConfig(vocab_size=enc.tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, pad_token_id=0)  # fmt: skip
    RobertaModel(cfg).save_pretrained(tmp_path / "r")
    enc.tokenizer.save_pretrained(tmp_path / "r")
    rob = Encoder.from_pretrained(tmp_path / "r", device="cpu").eval()
    feats = rob.tokenize(["a b c", "a"])
    pos = rob.position_ids(feats)
    n = int(feats["attention_mask"][1].sum())
    assert pos[0].tolist()[:3] == [1, 2, 3] and (pos[1, n:] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(rob({**feats, "position_ids": pos}), rob(feats))


def test_pool_cls_without_pooler_raises() -> None:
    h = torch.zeros(1, 3, 4)
    with pytest.raises(UserError, match="pooler"):
        pool("cls", h, torch.ones(1, 3), pooler_output=None)


def test_default_pooling_and_lengths(tiny_bert_dir: Path) -> None:
    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu")
    assert (enc.pooling, enc.normalize, enc.max_seq_length) == ("mean", False, 128)
    assert enc.hidden_size == 32 and enc.device.type == "cpu"
    long = enc.tokenize(["word " * 500])
    assert long["input_ids"].shape[1] == 128


def test_forward_grads_and_inputs_embeds(tiny_bert_dir: Path) -> None:
    enc = Encoder.from_pretrained(tiny_bert_dir, pooling="avg_top2", device="cpu").eval()
    feats = enc.tokenize(["gradients should flow", "yes"])
    enc(feats).pow(2).sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    # ConSERT-style views: inputs_embeds replaces input_ids and gives the same result.
    with torch.no_grad():
        embeds = enc.model.embeddings.word_embeddings(feats["input_ids"])
        via_embeds = enc({**feats, "inputs_embeds": embeds})
        torch.testing.assert_close(via_embeds, enc(feats))
        pos = torch.zeros_like(feats["input_ids"])  # position_ids reach the model
        assert not torch.allclose(enc({**feats, "position_ids": pos}), enc(feats))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("pooling", Encoder.POOLINGS)
def test_save_loads_in_sentence_transformers(
    tiny3: Path, tmp_path: Path, pooling: str, normalize: bool
) -> None:
    from sentence_transformers import SentenceTransformer

    enc = Encoder.from_pretrained(tiny3, pooling=pooling, normalize=normalize, device="cpu")
    ours = enc.encode(SENTENCES, batch_size=8)
    enc.save(tmp_path / "m")
    theirs = SentenceTransformer(str(tmp_path / "m"), device="cpu").encode(SENTENCES, batch_size=8)
    assert np.abs(ours - theirs).max() < 1e-5
    back = Encoder.from_pretrained(tmp_path / "m", device="cpu")
    assert (back.pooling, back.normalize, back.max_seq_length) == (pooling, normalize, 128)
    assert np.abs(back.encode(SENTENCES, batch_size=8) - ours).max() < 1e-6


def test_tie_between_equivalent_poolings_round_trips(tiny_bert_dir: Path, tmp_path: Path) -> None:
    # With 2 layers avg_top2 == avg_first_last; the saved name still comes back.
    Encoder.from_pretrained(tiny_bert_dir, pooling="avg_first_last").save(tmp_path / "m")
    assert Encoder.from_pretrained(tmp_path / "m").pooling == "avg_first_last"


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_save_loads_in_automodel(tiny3: Path, tmp_path: Path, pooling: str) -> None:
    from transformers import AutoModel, AutoTokenizer

    enc = Encoder.from_pretrained(tiny3, pooling=pooling, device="cpu")
    enc.save(tmp_path / "m")
    model = AutoModel.from_pretrained(str(tmp_path / "m")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    assert tok.model_max_length == enc.max_seq_length
    feats = tok(SENTENCES[:6], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**feats)
    if pooling == "cls":
        want = out.pooler_output
    else:
        m = feats["attention_mask"].unsqueeze(-1).float()
        want = (out.last_hidden_state * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(enc.encode(SENTENCES[:6]), want.numpy(), atol=1e-5)


def test_sentence_transformers_written_dir_loads(tiny3: Path, tmp_path: Path) -> None:
    """A dir written by SentenceTransformer.save (ST 6.x keys) with WeightedLayerPooling + Dense."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st

    t = st.Transformer(str(tiny3), config_kwargs={"output_hidden_states": True})
    mods = [
        t,
        st.WeightedLayerPooling(32, num_hidden_layers=3, layer_start=2),
        st.Pooling(32, "mean"),
        st.Dense(32, 8),
        st.Normalize(),
    ]
    model = SentenceTransformer(modules=mods, device="cpu")
    model.save(str(tmp_path / "m"))
    enc = Encoder.from_pretrained(tmp_path / "m", device="cpu")
    assert (enc.pooling, enc.normalize, enc.hidden_size) == ("avg_top2", True, 8)
    assert np.abs(enc.encode(SENTENCES) - model.encode(SENTENCES)).max() < 1e-5
    enc.save(tmp_path / "again")  # our writer keeps the Dense head
    again = SentenceTransformer(str(tmp_path / "again"), device="cpu").encode(SENTENCES)
    assert np.abs(again - model.encode(SENTENCES)).max() < 1e-5


def test_minilm_matches_sentence_transformers(minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    enc = Encoder.from_pretrained(minilm_dir, device="cpu")
    assert (enc.pooling, enc.normalize, enc.max_seq_length) == ("mean", True, 256)
    ours = enc.encode(SENTENCES, batch_size=7)
    theirs = SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES, batch_size=7)
    assert ours.dtype == np.float32 and ours.shape == (len(SENTENCES), 384)
    assert np.abs(ours - theirs).max() < 1e-5


def test_encode_keeps_input_order(tiny_bert_dir: Path) -> None:
    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu")
    batched = enc.encode(SENTENCES, batch_size=3)  # length-sorted batches internally
    one_by_one = np.stack([enc.encode([s])[0] for s in SENTENCES])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert enc.encode([]).shape == (0, 32)


def test_encode_restores_train_mode_and_rejects_cpu_half(tiny_bert_dir: Path) -> None:
    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu").train()
    a, b = enc.encode(["dropout is off"]), enc.encode(["dropout is off"])
    np.testing.assert_array_equal(a, b)
    assert enc.training
    with pytest.raises(UserError, match="CUDA"):
        enc.encode(["x"], precision="fp16")
    with pytest.raises(UserError, match="precision"):
        enc.encode(["x"], precision="int8")


@pytest.mark.parametrize("bad", ["/definitely/not/a/model", "not-an-org/not-a-model-xyz"])
def test_bad_model_raises_user_error(bad: str) -> None:
    with pytest.raises(UserError, match="not-a|not exist"):
        Encoder.from_pretrained(bad)


def test_dir_without_config_raises(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config.json"):
        Encoder.from_pretrained(tmp_path)


def test_bad_pooling_lists_valid_ones(tiny_bert_dir: Path) -> None:
    with pytest.raises(UserError, match="avg_first_last"):
        Encoder.from_pretrained(tiny_bert_dir, pooling="median")


def test_unsupported_st_modules_raise(tiny_bert_dir: Path, tmp_path: Path) -> None:
    Encoder.from_pretrained(tiny_bert_dir).save(tmp_path / "m")
    (tmp_path / "m" / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode": "lasttoken"})
    )
    with pytest.raises(UserError, match="1_Pooling/config.json.*lasttoken"):
        Encoder.from_pretrained(tmp_path / "m")
    mods = json.loads((tmp_path / "m" / "modules.json").read_text())
    mods.append(
        {"idx": 9, "name": "9", "path": "9_LSTM", "type": "sentence_transformers.models.LSTM"}
    )
    (tmp_path / "m" / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(UserError, match="LSTM"):
        Encoder.from_pretrained(tmp_path / "m")


def test_save_is_atomic_and_safe(tiny_bert_dir: Path, tmp_path: Path, monkeypatch) -> None:
    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu")

    # A crash while writing leaves neither the target nor temp directories behind.
    def crash(encoder, out, modules):
        write_st(encoder, out, modules)
        raise RuntimeError("disk full")

    monkeypatch.setattr(contrasent.model.encoder, "write_st", crash)
    with pytest.raises(RuntimeError):
        enc.save(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    # Overwriting a model directory works; a foreign non-empty directory is refused.
    enc.save(tmp_path / "m")
    Encoder.from_pretrained(tiny_bert_dir, pooling="max").save(tmp_path / "m")
    assert Encoder.from_pretrained(tmp_path / "m").pooling == "max"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="refusing"):
        enc.save(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"
