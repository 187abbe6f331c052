"""``train.fast_dropout``: the CPU masks drawn four to a 64-bit word have nn.Dropout's
distribution (rate, per-lane uniformity, expectation), its gradient, and come from torch's
default generator (seeded and replayed like nn.Dropout's)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from contrasent.model.dropout import FastDropout, drop_mask, use_fast_dropout
from contrasent.model.encoder import Encoder


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_each_lane_drops_at_the_rate_asked(p):
    torch.manual_seed(0)
    n = 4 * 250_000
    mask = drop_mask(torch.Size([n]), p, torch.float32)
    k = round(p * 65536)
    rate = k / 65536
    # each of the four 16-bit lanes of a word on its own (a lane with a constant bit would
    # drop at 0 or 2p); 5 binomial standard deviations
    for lane in range(4):
        dropped = (mask[lane::4] == 0).double().mean().item()
        assert abs(dropped - rate) < 5 * math.sqrt(rate * (1 - rate) / (n / 4)), (lane, dropped)
    kept = mask[mask != 0]
    assert torch.all(kept == 65536 / (65536 - k))  # one scale, by hand
    assert abs(mask.double().mean().item() - 1.0) < 5 * math.sqrt(rate / (1 - rate) / n)


def test_neighbouring_lanes_are_independent():
    torch.manual_seed(1)
    n = 4 * 200_000
    drop = drop_mask(torch.Size([n]), 0.5, torch.float32) == 0
    both = (drop[0::4] & drop[1::4]).double().mean().item()  # P(both) = 0.25 if independent
    assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / (n / 4))


def test_forward_and_gradient_are_the_mask_by_hand():
    layer = FastDropout(0.2).train()
    x = torch.randn(3, 7, 11, requires_grad=True)
    g = torch.randn(3, 7, 11)
    torch.manual_seed(5)
    y = layer(x)
    y.backward(g)
    torch.manual_seed(5)
    mask = drop_mask(x.shape, 0.2, x.dtype)  # the same draw
    assert torch.equal(y, x.detach() * mask)
    assert torch.equal(x.grad, g * mask)
    assert 0 < (mask == 0).sum() < mask.numel()


def test_bf16_keeps_its_dtype_and_eval_is_identity():
    x = torch.randn(64, 96).to(torch.bfloat16)
    assert FastDropout(0.1).train()(x).dtype == torch.bfloat16
    assert torch.equal(FastDropout(0.1).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)


def test_draws_follow_the_default_generator():
    layer = FastDropout(0.1).train()
    x = torch.ones(1000)
    torch.manual_seed(3)
    a = layer(x)
    b = layer(x)
    assert not torch.equal(a, b)  # the generator moved on
    torch.manual_seed(3)
    assert torch.equal(layer(x), a)
    state = torch.get_rng_state()
    with torch.random.fork_rng(devices=[]):  # the gradient cache's replay
        torch.set_rng_state(state)
        replayed = layer(x)
    assert torch.equal(replayed, layer(x))


def test_swap_keeps_the_model_and_only_swaps_dropout(tiny_bert_dir):
    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooling="mean")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    n_dropout = sum(type(m) is nn.Dropout and m.p > 0 for m in enc.modules())
    enc.eval()
    texts = ["A man plays a guitar.", "Two dogs run.", "Rain"]
    with torch.no_grad():
        ref = enc.encode(texts)
    assert use_fast_dropout(enc) == n_dropout + 1 > 1  # + the attention switch
    assert not any(type(m) is nn.Dropout and m.p > 0 for m in enc.modules())
    assert use_fast_dropout(enc) == 0  # idempotent
    after = enc.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert (enc.encode(texts) == ref).all()
    enc.train()  # in training the drawn masks now move the output
    torch.manual_seed(0)
    feats = enc.tokenize(texts)
    a = enc(feats)
    b = enc(feats)
    assert not torch.allclose(a, b)


def test_the_tied_tsdae_decoder_held_unregistered_is_switched_too(tiny_bert_dir):
    """TSDAE's tied decoder runs outside the module tree (``held_modules``): switching the
    objective switches its dropout and attention, and back."""
    from contrasent.model.dropout import ATTENTION
    from contrasent.objectives import build_objective
    from contrasent.objectives.tsdae_parts import reconstruction_row_losses, tokenize_targets

    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooling="cls_before_pooler")
    obj = build_objective("tsdae", enc)
    model = obj.decoder.hf_model
    assert not any(m is model for m in obj.modules())  # held, not registered
    n_dropout = sum(type(m) is nn.Dropout and m.p > 0 for m in model.modules())
    assert n_dropout > 0
    assert not model.training  # loaded in eval mode
    assert use_fast_dropout(obj) == n_dropout + 1  # + its attention switch
    assert not any(type(m) is nn.Dropout and m.p > 0 for m in model.modules())
    assert not any(m.training for m in model.modules())  # the swapped modules kept the mode
    obj.eval()  # so evaluation draws no dropout, before any training step or after
    texts = ["a man plays a guitar on the stage", "the cat sleeps"]
    targets, _ = tokenize_targets(obj.decoder.tokenizer, texts, 16)
    memory = torch.randn(2, enc.hidden_size)
    with torch.no_grad():
        a, b = (reconstruction_row_losses(obj.decoder, memory, targets) for _ in range(2))
    assert torch.equal(a, b)
    assert model.config._attn_implementation == ATTENTION
    assert use_fast_dropout(obj, on=False) == n_dropout + 1
    assert model.config._attn_implementation == "sdpa"


def _qkv(b=3, heads=2, lq=5, lk=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, heads, n, d, generator=g, requires_grad=True) for n in (lq, lk, lk)]


class _Attention(nn.Module):
    def __init__(self, is_causal: bool):
        super().__init__()
        self.is_causal = is_causal


@pytest.mark.parametrize(
    "case", ["padding mask", "additive mask", "causal, no mask", "cross, no mask"]
)
def test_fast_attention_is_sdpa_when_nothing_is_dropped(case, monkeypatch):
    """With every element kept, the math path (softmax(q k^T s + mask) v) equals transformers'
    sdpa function without dropout: outputs and gradients."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from contrasent.model import dropout as module_under_test

    lk = 7 if case.startswith("cross") else 5
    q, k, v = _qkv(lk=lk)
    mask = None
    if case.endswith("mask") and not case.endswith("no mask"):
        keep = torch.ones(3, 1, 5, 5, dtype=torch.bool)
        keep[0, :, :, 3:] = False  # row 0 has 3 real tokens
        keep[2, :, :, 4:] = False
        mask = keep if case == "padding mask" else torch.zeros(keep.shape).masked_fill(~keep, -1e9)
    attn = _Attention(is_causal=case.startswith("causal")).train()
    monkeypatch.setattr(module_under_test, "drop_mask", lambda s, p, dt: torch.ones(s, dtype=dt))
    ours, _ = module_under_test.fast_attention(attn, q, k, v, mask, dropout=0.1, scaling=0.3)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, (q, k, v), g)
    ref, _ = sdpa_attention_forward(attn.eval(), q, k, v, mask, dropout=0.0, scaling=0.3)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    assert ours.shape == ref.shape == (3, 5, 2, 4)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fast_attention_drops_probabilities_by_hand():
    from contrasent.model.dropout import fast_attention

    q, k, v = _qkv()
    attn = _Attention(is_causal=False).train()
    torch.manual_seed(9)
    ours, _ = fast_attention(attn, q, k, v, None, dropout=0.25)
    torch.manual_seed(9)
    probs = torch.softmax(q @ k.transpose(2, 3) * 4**-0.5, dim=-1)
    want = (probs * drop_mask(probs.shape, 0.25, probs.dtype)) @ v
    torch.testing.assert_close(ours, want.transpose(1, 2), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(ours, (probs @ v).transpose(1, 2))  # something was dropped


def test_the_attention_switch_is_not_saved_and_turns_back(tiny_bert_dir, tmp_path):
    from contrasent.model.dropout import ATTENTION

    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooling="mean")
    assert enc.model.config._attn_implementation == "sdpa"
    use_fast_dropout(enc)
    assert enc.model.config._attn_implementation == ATTENTION
    enc.model.save_pretrained(tmp_path / "saved")
    assert ATTENTION not in (tmp_path / "saved" / "config.json").read_text()
    use_fast_dropout(enc, on=False)
    assert enc.model.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, FastDropout) for m in enc.modules())


@pytest.mark.parametrize("pays", [True, False])
def test_bf16_inference_attention_runs_in_fp32_where_that_pays(pays, monkeypatch):
    """In evaluation, bf16 q/k/v: on an AVX512-BF16 CPU without AMX the attention is sdpa on the
    fp32 casts, cast back (exactly); elsewhere, in training and under autocast, sdpa as given."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from contrasent.model import dropout as module_under_test

    monkeypatch.setattr(module_under_test, "fp32_attention_pays", lambda: pays)
    q, k, v = (t.detach().to(torch.bfloat16) for t in _qkv(lq=6, lk=6))
    mask = torch.zeros(3, 1, 6, 6, dtype=torch.bfloat16)
    mask[1, :, :, 4:] = torch.finfo(torch.bfloat16).min  # row 1 has 4 real tokens
    attn = _Attention(is_causal=False).eval()
    ours, _ = module_under_test.fast_attention(attn, q, k, v, mask, scaling=0.3)
    up = (t.float() for t in (q, k, v))
    in_fp32 = sdpa_attention_forward(attn, *up, mask.float(), scaling=0.3)[0].to(torch.bfloat16)
    as_given = sdpa_attention_forward(attn, q, k, v, mask, scaling=0.3)[0]
    assert ours.dtype == torch.bfloat16
    assert not torch.equal(in_fp32, as_given)  # the two paths are told apart
    assert torch.equal(ours, in_fp32 if pays else as_given)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(module_under_test.fast_attention(attn, q, k, v, mask, scaling=0.3)[0],
                           sdpa_attention_forward(attn, q, k, v, mask, scaling=0.3)[0])  # fmt: skip
    attn.train()
    assert torch.equal(module_under_test.fast_attention(attn, q, k, v, mask, scaling=0.3)[0],
                       as_given)  # fmt: skip


def test_the_held_bf16_copy_uses_the_fast_attention_and_the_model_does_not(
    tiny_bert_dir, monkeypatch
):
    from contrasent.model import dropout as module_under_test

    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooling="mean")
    texts = ["a short one", "a somewhat longer sentence than the first one", "x"]
    monkeypatch.setattr(module_under_test, "fp32_attention_pays", lambda: False)
    plain = enc.encode(texts, precision="bf16", normalize=True)
    monkeypatch.setattr(module_under_test, "fp32_attention_pays", lambda: True)
    fast = enc.encode(texts, precision="bf16", normalize=True)
    assert (
        enc._held_model(torch.bfloat16).config._attn_implementation == module_under_test.ATTENTION
    )
    assert enc.model.config._attn_implementation == "sdpa"  # what is trained and saved
    assert not np.array_equal(plain, fast)  # the held copy took the fp32 attention
    assert (plain * fast).sum(axis=1).min() > 0.999
    ref = enc.encode(texts, normalize=True)  # fp32
    assert (fast * ref).sum(axis=1).min() > 0.999
