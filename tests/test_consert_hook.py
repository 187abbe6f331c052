"""Prototype of the encoder hook for ConSERT's views, checked through a tiny BERT / RoBERTa.

The plan (Engine v2 contract): ``view.positions`` changes the position ids passed to the HF
model; ``view.embeddings`` replaces the output of ``model.embeddings`` (a forward hook), i.e.
the tensor after the embeddings' LayerNorm and dropout, which is where the reference's
``BertModel.forward`` applies cutoff / dropout / adversarial noise (``_replace_embedding_output``
right after ``self.embeddings(...)``) and, before it, shuffles the position ids
(``_replace_position_ids``). These tests show that the hook changes exactly that tensor: the
hooked forward equals a hand-built forward (embeddings module -> view -> encoder layers).

``forward_with_view`` below is test-only; the lead's encoder gets the real hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor

from contrasent.augment import views as V
from contrasent.augment.embedding import (
    EmbeddingAugmentation,
    FeatureCutoff,
    NoAugmentation,
    TokenCutoff,
    TokenShuffle,
    parse_view,
)
from contrasent.encoder import Encoder, pool
from contrasent.objectives.nli_head import NLISoftmaxHead

TEXTS = ["a man is playing a guitar .", "the cat sat on the mat", "hi", "two dogs run in a park"]


# ------------------------------------------------------------------ the prototype hook
def default_position_ids(model, input_ids: Tensor) -> Tensor:
    """The ids the HF model would make itself: RoBERTa-style from the padding, else arange."""
    emb = model.embeddings
    if hasattr(emb, "create_position_ids_from_input_ids"):  # RoBERTa family: padding_idx + 1..
        return emb.create_position_ids_from_input_ids(input_ids, emb.padding_idx)
    t = input_ids.shape[1]
    return torch.arange(t, device=input_ids.device).expand(input_ids.shape[0], t)


@contextmanager
def embedding_hook(encoder: Encoder, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    handle = encoder.model.embeddings.register_forward_hook(lambda _m, _a, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


def forward_with_view(
    encoder: Encoder, features: dict[str, Tensor], view: EmbeddingAugmentation, generator
) -> Tensor:
    mask = features["attention_mask"]
    pos = features.get("position_ids")
    if pos is None:
        pos = default_position_ids(encoder.model, features["input_ids"])
    feats = {**features, "position_ids": view.positions(pos, mask, generator)}
    with embedding_hook(encoder, lambda out: view.embeddings(out, mask, generator)):
        return encoder(feats)


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


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ tests
def test_none_view_is_the_plain_forward(bert):
    f = bert.tokenize(TEXTS)
    torch.testing.assert_close(forward_with_view(bert, f, NoAugmentation(), gen()), bert(f))


@pytest.mark.parametrize("view", [TokenCutoff(0.3), FeatureCutoff(0.2), parse_view("dropout")])
def test_hook_changes_exactly_the_embedding_output(bert, view):
    f = bert.tokenize(TEXTS)
    got = forward_with_view(bert, f, view, gen(4))
    pos = default_position_ids(bert.model, f["input_ids"])
    want = hand_forward(bert, f, pos, lambda e: view.embeddings(e, f["attention_mask"], gen(4)))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got, bert(f))  # the view did change something
    torch.testing.assert_close(bert(f), hand_forward(bert, f, pos, lambda e: e))  # hook removed


def test_shuffle_passes_permuted_positions_and_keeps_token_ids(bert):
    f = bert.tokenize(TEXTS)
    ids_before = f["input_ids"].clone()
    got = forward_with_view(bert, f, TokenShuffle(), gen(2))
    pos = V.shuffle_positions(
        default_position_ids(bert.model, f["input_ids"]), f["attention_mask"], gen(2)
    )
    torch.testing.assert_close(got, bert({**f, "position_ids": pos}), rtol=0, atol=0)
    assert torch.equal(f["input_ids"], ids_before) and "position_ids" not in f
    assert not torch.allclose(got, bert(f))


def test_roberta_positions_start_after_padding_idx(roberta):
    f = roberta.tokenize(TEXTS)
    mask = f["attention_mask"]
    pos = default_position_ids(roberta.model, f["input_ids"])
    pad = roberta.model.embeddings.padding_idx
    assert (pos[mask.bool()] > pad).all() and (pos[~mask.bool()] == pad).all()
    # the default ids through the view path are the model's own: none == plain forward
    torch.testing.assert_close(forward_with_view(roberta, f, NoAugmentation(), gen()), roberta(f))
    shuffled = V.shuffle_positions(pos, mask, gen(1))
    for i, n in enumerate(mask.sum(1).tolist()):
        assert sorted(shuffled[i, :n].tolist()) == list(range(pad + 1, pad + 1 + n))
    # the reference substitutes arange(T) when no ids are passed: for RoBERTa that is another
    # model input (off by padding_idx + 1), not the unshuffled one
    arange = torch.arange(pos.shape[1]).expand_as(pos)
    assert not torch.allclose(roberta({**f, "position_ids": arange}), roberta(f))


def test_gradients_flow_through_the_hooked_view(bert):
    f = bert.tokenize(TEXTS)
    bert.zero_grad()
    forward_with_view(bert, f, TokenCutoff(0.3), gen(1)).pow(2).sum().backward()
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
    captured: list[Tensor] = []

    def keep(out: Tensor) -> Tensor:
        captured.append(out)
        return out

    with embedding_hook(bert, keep):
        u, v = bert(a), bert(b)
    ce = head.loss(u, v, labels)
    grads = torch.autograd.grad(ce, captured, retain_graph=True)
    view = parse_view({"name": "adversarial", "epsilon": 0.05})
    adv_a = view.with_grad(grads[0], a["attention_mask"])
    adv_b = view.with_grad(grads[1], b["attention_mask"])
    ua, va = forward_with_view(bert, a, adv_a, gen()), forward_with_view(bert, b, adv_b, gen())
    assert head.loss(ua, va, labels) > ce  # the noise is an ascent direction of L_ce
    pos = default_position_ids(bert.model, a["input_ids"])
    noise = V.fgv_perturbation(grads[0], 0.05, a["attention_mask"])
    torch.testing.assert_close(
        ua, hand_forward(bert, a, pos, lambda e: e + noise), rtol=1e-10, atol=1e-12
    )
    token_norms = adv_a.noise.norm(dim=-1)[a["attention_mask"].bool()]
    torch.testing.assert_close(token_norms, torch.full_like(token_norms, 0.05))
