"""SimCSE, pairs and the MLM auxiliary on the real Encoder over the tiny random BERT."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from contrasent.core.errors import UserError
from contrasent.data.batches import PairBatch, SentenceBatch
from contrasent.model.encoder import Encoder
from contrasent.objectives import OBJECTIVES, build_objective
from contrasent.objectives.base import View
from contrasent.objectives.mlm import (
    IGNORE_INDEX,
    MLMHead,
    mask_rows_keyed,
    mask_tokens,
    maskable_positions,
)

TEXTS = ["a man is playing a guitar", "the cat sleeps on the sofa", "stocks fell sharply today",
         "she is reading a long book", "two dogs run in the park"]  # fmt: skip


def cos(u, v) -> float:
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def loop_loss(rows, cols, s, positives, bias=None, masked=()) -> float:
    """Mean over rows of CE at column positives[i]; bias[i][j] added; (i, j) in masked left out."""
    total = 0.0
    for i, q in enumerate(rows):
        logits, target = [], None
        for j, k in enumerate(cols):
            if (i, j) in masked:
                continue
            if j == positives[i]:
                target = len(logits)
            logits.append(s * cos(q, k) + (bias[i][j] if bias else 0.0))
        m = max(logits)
        total -= logits[target] - m - math.log(sum(math.exp(x - m) for x in logits))
    return total / len(rows)


@pytest.fixture()
def encoder(tiny_bert_dir) -> Encoder:
    torch.manual_seed(0)
    return Encoder.from_pretrained(tiny_bert_dir, pooling="cls_before_pooler", device="cpu")


def embed_views(obj, enc, views):
    """The views' embeddings from ONE pass over their concatenated texts (the plain step's)."""
    flat = [t for v in views for t in v.texts]
    with torch.no_grad():
        emb = obj.embed(enc, View("all", flat), enc.tokenize(flat))
    return [e.double().numpy() for e in emb.split([len(v) for v in views])]


def test_simcse_unsup_train_mode_views_differ_and_loss_is_info_nce(encoder):
    obj = build_objective("simcse_unsup", encoder)
    encoder.train()
    batch = SentenceBatch(TEXTS)
    torch.manual_seed(123)
    out = obj(encoder, batch)
    torch.manual_seed(123)  # same dropout masks: the same single [x; x] pass
    z1, z2 = embed_views(obj, encoder, obj.views(batch))
    assert np.abs(z1 - z2).max() > 1e-4  # two dropout masks -> two different views
    want = loop_loss(z1, z2, 20.0, list(range(len(TEXTS))))
    assert out["loss"].item() == pytest.approx(want, rel=1e-5)
    out["loss"].backward()
    assert encoder.model.embeddings.word_embeddings.weight.grad is not None
    assert obj.mlp[0].weight.grad is not None


def test_simcse_unsup_eval_no_mlp_positive_is_max(encoder):
    obj = build_objective("simcse_unsup", encoder, mlp=False)
    encoder.eval()
    z1, z2 = embed_views(obj, encoder, obj.views(SentenceBatch(TEXTS)))
    np.testing.assert_allclose(z1, z2, atol=1e-6)  # no dropout: identical views
    for i in range(len(TEXTS)):
        row = [20.0 * cos(z1[i], z2[j]) for j in range(len(TEXTS))]
        assert row[i] >= max(row) - 1e-6
    out = obj(encoder, SentenceBatch(TEXTS))
    assert out["accuracy"].item() == 1.0
    assert out["loss"].item() < math.log(len(TEXTS))


def test_simcse_sup_hard_negatives_weighted(encoder):
    obj = build_objective("simcse_sup", encoder, hard_negative_weight=0.8)
    encoder.eval()
    batch = PairBatch(TEXTS[:3], TEXTS[2:5], [["it is raining", "nobody is here", "a blue car"]])
    a, p, n = embed_views(obj, encoder, obj.views(batch))
    bias = [[0.8 if j == 3 + i else 0.0 for j in range(6)] for i in range(3)]
    want = loop_loss(a, list(p) + list(n), 20.0, [0, 1, 2], bias)
    assert obj(encoder, batch)["loss"].item() == pytest.approx(want, rel=1e-5)


def test_pairs_duplicates_masked(encoder):
    encoder.eval()
    # row 2 repeats row 0's positive; row 3's anchor is row 1's positive; row 1's negative is
    # row 3's positive text.
    batch = PairBatch(
        anchors=["how do I bake bread", "what is a cat", "bread baking guide", "cats are pets"],
        positives=["bake bread at home", "cats are pets", "bake bread at home", "a small dog"],
        negatives=[["the stock market", "a small dog", "green tea", "a red car"]],
    )
    masked_obj = build_objective("pairs", encoder)  # scale 20, dedup="mask"
    plain_obj = build_objective("pairs", encoder, dedup="none")
    a, p, n = embed_views(masked_obj, encoder, masked_obj.views(batch))
    cols = list(p) + list(n)
    # row 0/2: column of the other's identical positive; row 1 (positive "cats are pets") and row 3
    # (anchor "cats are pets"): each other's positive column; row 3's positive "a small dog" is
    # row 1's hard negative (column 4 + 1).
    masked = {(0, 2), (2, 0), (1, 3), (3, 1), (3, 5)}
    want = loop_loss(a, cols, 20.0, [0, 1, 2, 3], masked=masked)
    assert masked_obj(encoder, batch)["loss"].item() == pytest.approx(want, rel=1e-5)
    plain = loop_loss(a, cols, 20.0, [0, 1, 2, 3])
    assert plain_obj(encoder, batch)["loss"].item() == pytest.approx(plain, rel=1e-5)
    assert abs(want - plain) > 1e-3


def test_pairs_symmetric_and_auto(encoder):
    encoder.eval()
    batch = PairBatch(TEXTS[:3], TEXTS[2:5])
    obj = build_objective("pairs", encoder, symmetric=True, dedup="none")
    a, p = embed_views(obj, encoder, obj.views(batch))
    fwd = loop_loss(a, p, 20.0, [0, 1, 2])
    rev = loop_loss(p, a, 20.0, [0, 1, 2])
    assert obj(encoder, batch)["loss"].item() == pytest.approx((fwd + rev) / 2, rel=1e-5)
    auto = build_objective("pairs", encoder, symmetric="auto", dedup="none")
    assert auto(encoder, batch)["loss"].item() == pytest.approx((fwd + rev) / 2, rel=1e-5)
    with_neg = PairBatch(TEXTS[:3], TEXTS[2:5], [["x y", "z w", "u v"]])
    a, p, n = embed_views(auto, encoder, auto.views(with_neg))
    one_way = loop_loss(a, list(p) + list(n), 20.0, [0, 1, 2])  # the 1B script's 3-column rule
    assert auto(encoder, with_neg)["loss"].item() == pytest.approx(one_way, rel=1e-5)


def test_mask_tokens_statistics_and_specials():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (200, 64), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    attention = torch.ones_like(ids)
    attention[:100, 40:] = 0  # padding
    ids[:100, 40:] = 0
    maskable = maskable_positions(ids, attention, [0, 101, 102, 103])
    inputs, labels = mask_tokens(ids, maskable, mask_token_id=103, vocab_size=3000,
                                 generator=torch.Generator().manual_seed(1), probability=0.15)  # fmt: skip
    selected = labels != IGNORE_INDEX
    assert not selected[~maskable].any()  # never a special or pad token
    assert torch.equal(inputs[~maskable], ids[~maskable])
    assert torch.equal(labels[selected], ids[selected])
    n = int(maskable.sum())
    rate = selected.sum().item() / n
    assert abs(rate - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    k = int(selected.sum())
    as_mask = (inputs[selected] == 103).sum().item() / k
    kept = (inputs[selected] == ids[selected]).sum().item() / k
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.025
    again = mask_tokens(ids, maskable, mask_token_id=103, vocab_size=3000,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)


def test_keyed_masks_do_not_depend_on_the_batch_a_row_is_in(encoder):
    """A row's mask is the same in the whole batch, in a slice (another process, a cache chunk)
    and with other padding: what makes several processes equal one, and resume exact."""
    texts = TEXTS * 2
    keys = [(3, i, 0) for i in range(len(texts))]

    def masked(rows: slice):
        feats = encoder.tokenize(texts[rows])
        ids = feats["input_ids"]
        ok = maskable_positions(ids, feats["attention_mask"], encoder.tokenizer.all_special_ids)
        return mask_rows_keyed(ids, ok, keys[rows], seed=1, mask_token_id=103, vocab_size=500,
                               probability=0.3)  # fmt: skip

    full_in, full_lab = masked(slice(0, 10))
    for rows in (slice(0, 3), slice(3, 10), slice(7, 8)):
        part_in, part_lab = masked(rows)
        w = part_in.shape[1]
        assert torch.equal(part_in, full_in[rows, :w]) and torch.equal(part_lab, full_lab[rows, :w])
    assert (full_lab != IGNORE_INDEX).any()


def test_mlm_fresh_head_warns_and_is_tied(encoder, caplog):
    with caplog.at_level(logging.WARNING, logger="contrasent.objectives.mlm"):
        head = MLMHead.from_encoder(encoder)
    assert not head.pretrained and "no pretrained masked-LM head" in caplog.text
    hidden = torch.randn(3, encoder.model.config.hidden_size)
    logits = head(hidden)
    emb = encoder.model.get_input_embeddings().weight
    inner = head.head
    manual = (
        inner.layer_norm(torch.nn.functional.gelu(inner.dense(hidden))) @ emb.T + inner.decoder.bias
    )
    torch.testing.assert_close(logits, manual)
    logits.sum().backward()
    assert emb.grad is not None  # the tie trains the encoder's embeddings
    assert not any(p is emb for p in head.parameters())


def test_mlm_pretrained_head_is_loaded(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(3)
    ref = BertForMaskedLM(cfg)
    ref.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    enc = Encoder.from_pretrained(tmp_path, pooling="cls_before_pooler", device="cpu")
    head = MLMHead.from_encoder(enc)
    assert head.pretrained
    torch.testing.assert_close(head.head.predictions.transform.dense.weight,
                               ref.cls.predictions.transform.dense.weight)  # fmt: skip
    ref.eval()
    enc.eval()
    features = enc.tokenize(["a tiny test sentence"])
    with torch.no_grad():
        want = ref(**features).logits
        got = head(enc.model(**features).last_hidden_state)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_simcse_with_mlm_parts(encoder):
    obj = build_objective("simcse_unsup", encoder, do_mlm=True, mlm_seed=5)
    encoder.eval()
    out = obj(encoder, SentenceBatch(TEXTS))
    assert {"loss", "contrastive", "mlm"} <= set(out)
    assert out["loss"].item() == pytest.approx(
        out["contrastive"].item() + 0.1 * out["mlm"].item(), rel=1e-6
    )
    assert out["mlm"].item() > 0
    out["loss"].backward()
    assert any(p.grad is not None for p in obj.mlm.parameters())
    # masks are keyed by (seed, batch index, row): the same batch draws the same masks again,
    # another batch index other masks (no generator state to carry through a checkpoint)
    again = obj(encoder, SentenceBatch(TEXTS))
    assert again["mlm"].item() == out["mlm"].item()
    later = obj(encoder, SentenceBatch(TEXTS, index=7))
    assert later["mlm"].item() != out["mlm"].item()
    cfg = obj.config_dict()
    assert cfg["do_mlm"] and cfg["mlm_weight"] == 0.1 and cfg["mlm_probability"] == 0.15


def test_heads_live_in_objective_not_encoder(encoder):
    before = set(encoder.state_dict())
    obj = build_objective("simcse_sup", encoder, do_mlm=True)
    assert set(encoder.state_dict()) == before  # nothing added to what gets saved
    assert not any(k.startswith(("mlp", "mlm")) for k in encoder.state_dict())
    enc_params = {id(p) for p in encoder.parameters()}
    assert not any(id(p) in enc_params for p in obj.parameters())  # no tied weight duplicated
    assert any(k.startswith("mlp.") for k in obj.state_dict())
    assert any(k.startswith("mlm.") for k in obj.state_dict())


def test_registry_and_config_round_trip(encoder):
    assert {"simcse_unsup", "simcse_sup", "pairs"} <= set(OBJECTIVES)
    for name, opts in (("simcse_unsup", {"temperature": 0.1}), ("simcse_sup", {"hard_negative_weight": 1.0}),
                       ("pairs", {"symmetric": "auto"})):  # fmt: skip
        cfg = build_objective(name, encoder, **opts).config_dict()
        assert build_objective(**cfg, encoder=encoder).config_dict() == cfg
    with pytest.raises(UserError, match="unknown objective"):
        build_objective("simcse", encoder)
    with pytest.raises(UserError, match="temprature"):
        build_objective("simcse_unsup", encoder, temprature=0.05)
    with pytest.raises(UserError):
        build_objective("pairs", encoder, scale=20.0, temperature=0.05)
    with pytest.raises(UserError):
        build_objective("pairs", encoder, dedup="drop")


def test_missing_setup_is_an_error(encoder):
    obj = OBJECTIVES["simcse_unsup"]()  # default options, setup() never called
    with pytest.raises(RuntimeError, match="setup"):
        obj(encoder, SentenceBatch(TEXTS))
