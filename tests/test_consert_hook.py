"""ConSERT's views through the encoder's augmentation hook, checked on a tiny BERT / RoBERTa.

``Encoder.forward(features, augment=view)``: ``view.positions`` changes the position ids passed
to the HF model; ``view.embeddings`` replaces the output of ``model.embeddings`` (a forward
hook), i.e. the tensor after the embeddings' LayerNorm and dropout, which is where the
reference's ``BertModel.forward`` applies cutoff / dropout / adversarial noise
(``_replace_embedding_output`` right after ``self.embeddings(...)``) and, before it, shuffles the
position ids (``_replace_position_ids``). The hooked forward equals a hand-built forward
(embeddings module -> view -> encoder layers) for every view class.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from contrasent.augment import views as V
from contrasent.augment.embedding import (
    CaptureEmbeddings,
    FeatureCutoff,
    NoAugmentation,
    TokenCutoff,
    TokenShuffle,
    parse_view,
)
from contrasent.model.encoder import Encoder, pool
from contrasent.objectives.nli_head import NLISoftmaxHead

TEXTS = ["a man is playing a guitar .", "the cat sat on the mat", "hi", "two dogs run in a park"]


# ------------------------------------------------------------------ helpers
def forward_with_view(encoder: Encoder, features: dict[str, Tensor], view, seed: int) -> Tensor:
    """The encoder's own hook (``forward(features, augment=view)``) from a seeded generator."""
    torch.manual_seed(seed)
    return encoder(features, augment=view)


def hand_forward(encoder: Encoder, features, position_ids, transform) -> Tensor:
    """embeddings module -> transform -> transformer layers -> mean pooling, built by hand."""
    model = encoder.model
    e = model.embeddings(
        input_ids=features["input_ids"],
        token_type_ids=features.get("token_type_ids"),
        position_ids=position_ids,
    )
    e = transform(e)
    mask = features["attention_mask"]
    additive = (1.0 - mask[:, None, None, :].to(e.dtype)) * torch.finfo(e.dtype).min
    h = model.encoder(e, attention_mask=additive).last_hidden_state
    return pool("mean", h, mask)


def seeded(fn, seed):
    """``fn`` run from the global seed ``seed`` (the view's draws, as in the hooked forward)."""

    def run(*args):
        torch.manual_seed(seed)
        return fn(*args)

    return run


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    enc = Encoder.from_pretrained(tiny_bert_dir, pooling="mean", device="cpu").double()
    return enc.eval()  # model dropout off: the view must be the only change


@pytest.fixture(scope="module")
def roberta(tmp_path_factory, minilm_dir):
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_roberta")
    RobertaModel(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return Encoder.from_pretrained(path, pooling="mean", device="cpu").double().eval()


# ------------------------------------------------------------------ tests
def test_none_view_is_the_plain_forward(bert):
    f = bert.tokenize(TEXTS)
    torch.testing.assert_close(forward_with_view(bert, f, NoAugmentation(), 0), bert(f))


@pytest.mark.parametrize(
    "view",
    [
        TokenCutoff(0.3),
        FeatureCutoff(0.2),
        parse_view("dropout"),
        parse_view({"name": "span", "rate": 0.3}),
    ],
)
def test_hook_changes_exactly_the_embedding_output(bert, view):
    f = bert.tokenize(TEXTS)
    got = forward_with_view(bert, f, view, 4)
    pos = bert.position_ids(f)
    mask = f["attention_mask"]
    want = hand_forward(bert, f, pos, seeded(lambda e: view.embeddings(e, mask), 4))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got, bert(f))  # the view did change something
    torch.testing.assert_close(bert(f), hand_forward(bert, f, pos, lambda e: e))  # hook removed


def test_shuffle_passes_permuted_positions_and_keeps_token_ids(bert):
    f = bert.tokenize(TEXTS)
    ids_before = f["input_ids"].clone()
    got = forward_with_view(bert, f, TokenShuffle(), 2)
    torch.manual_seed(2)
    pos = V.shuffle_positions(bert.position_ids(f), f["attention_mask"])
    torch.testing.assert_close(got, bert({**f, "position_ids": pos}), rtol=0, atol=0)
    assert torch.equal(f["input_ids"], ids_before) and "position_ids" not in f
    assert not torch.allclose(got, bert(f))


def test_roberta_shuffle_permutes_the_models_own_positions(roberta):
    f = roberta.tokenize(TEXTS)
    mask = f["attention_mask"]
    pad = roberta.model.embeddings.padding_idx
    torch.testing.assert_close(forward_with_view(roberta, f, NoAugmentation(), 0), roberta(f))
    seen = []
    view = TokenShuffle()
    original = view.positions
    view.positions = lambda p, m: seen.append(original(p, m)) or seen[-1]  # record the ids
    forward_with_view(roberta, f, view, 1)
    (shuffled,) = seen
    for i, n in enumerate(mask.sum(1).tolist()):  # ids start at padding_idx + 1, pads stay
        assert sorted(shuffled[i, :n].tolist()) == list(range(pad + 1, pad + 1 + n))
        assert (shuffled[i, n:] == pad).all()
    # the reference substitutes arange(T) when no ids are passed: for RoBERTa that is another
    # model input (off by padding_idx + 1), not the unshuffled one
    arange = torch.arange(mask.shape[1]).expand_as(mask)
    assert not torch.allclose(roberta({**f, "position_ids": arange}), roberta(f))


def test_gradients_flow_through_the_hooked_view(bert):
    f = bert.tokenize(TEXTS)
    bert.zero_grad()
    forward_with_view(bert, f, TokenCutoff(0.3), 1).pow(2).sum().backward()
    word = bert.model.embeddings.word_embeddings.weight.grad
    assert word is not None and word.abs().sum() > 0
    bert.zero_grad()


def test_adversarial_view_end_to_end_raises_the_supervised_loss(bert):
    """FGV as the reference runs it: plain forward, CE on the pair, gradient w.r.t. the embedding
    output, then a forward with ``output + epsilon * grad / ||grad||``."""
    a = bert.tokenize(TEXTS)
    b = bert.tokenize(TEXTS[::-1])
    labels = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(0)
    head = NLISoftmaxHead(bert.hidden_size, max_square=True).double()
    cap_a, cap_b = CaptureEmbeddings(), CaptureEmbeddings()
    u, v = bert(a, augment=cap_a), bert(b, augment=cap_b)
    torch.testing.assert_close(u, bert(a))  # capturing changes nothing
    ce = head.loss(u, v, labels)
    grads = torch.autograd.grad(ce, [cap_a.output, cap_b.output], retain_graph=True)
    view = parse_view({"name": "adversarial", "epsilon": 0.05})
    adv_a = view.with_grad(grads[0], a["attention_mask"])
    adv_b = view.with_grad(grads[1], b["attention_mask"])
    ua, va = bert(a, augment=adv_a), bert(b, augment=adv_b)
    assert head.loss(ua, va, labels) > ce  # the noise is an ascent direction of L_ce
    noise = V.fgv_perturbation(grads[0], 0.05, a["attention_mask"])
    want = hand_forward(bert, a, bert.position_ids(a), lambda e: e + noise)
    torch.testing.assert_close(ua, want, rtol=1e-10, atol=1e-12)
    token_norms = adv_a.noise.norm(dim=-1)[a["attention_mask"].bool()]
    torch.testing.assert_close(token_norms, torch.full_like(token_norms, 0.05))
