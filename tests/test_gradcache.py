"""Gradient cache (Gao et al. 2021) == plain backprop, with dropout ON.

How the comparison is built: dropout masks are drawn from torch's global generator in the order
and with the shapes of the encoder calls. One forward over the whole batch (2B padded texts) and
four forwards over chunks (other shapes, other padding) draw different masks, so they are two
different random functions, not two memory layouts of one computation; comparing them would
test nothing. The reference here therefore runs exactly the mini-batch forwards the cache runs
(same chunks, same order, same starting seed, hence the same masks) but keeps all their graphs,
computes the loss on the concatenated embeddings and does ONE backward: the textbook computation
whose memory the cache avoids. The cache's parameter gradients must equal it up to float
summation order (1e-5). Measured on the tiny BERT (dropout 0.1, gradients up to ~13): max
difference 5e-7 to 1e-6 for every case below.

That this detects wrong masks is checked too: the same cache without the RNG replay (fresh masks
in the re-encoding pass) is off by far more than the tolerance (measured: 8.5). And with one
mini-batch holding the whole batch, the reference IS ``objective.forward``, the plain training
path.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from contrasent.data.batches import PairBatch, SentenceBatch
from contrasent.encoder import Encoder
from contrasent.objectives import build_objective
from contrasent.objectives.simcse import SimCSEUnsup
from contrasent.train import gradcache
from contrasent.train.batching import slice_batch
from contrasent.train.gradcache import chunk, gradcache_step
from contrasent.train.loop import TrainModule

SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run across a snowy field.",
    "The stock market fell sharply on Monday.",
    "She is slicing an onion in the kitchen.",
    "A child rides a red bicycle down the street.",
    "The committee postponed its decision until next year.",
    "Rain is expected over the weekend.",
]
PAIRS = PairBatch(
    anchors=SENTENCES[:6],
    positives=[
        "Someone plays the guitar.",
        "Dogs are running through snow.",
        "Shares dropped steeply on Monday.",
        "A woman cuts an onion.",
        "A kid cycles along the road.",
        "The decision was delayed by the committee.",
    ],
    negatives=[
        [
            "A man is sleeping.",
            "The cats sit indoors.",
            "Markets rallied on Monday.",
            "She is baking a cake.",
            "A child is sitting at home.",
            "The committee decided at once.",
        ]
    ],
)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _module(tiny_bert_dir, name: str, device: str = "cpu", **options) -> TrainModule:
    torch.manual_seed(0)
    encoder = Encoder.from_pretrained(tiny_bert_dir, pooling="cls_before_pooler", device=device)
    objective = build_objective(name, encoder, **options)
    module = TrainModule(encoder, objective)
    module.train()  # dropout on: it is SimCSE's augmentation
    return module


def _grads(module: TrainModule) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _reference(module: TrainModule, batch, m: int, seed: int) -> tuple[float, dict]:
    """The same mini-batch forwards as the cache, all graphs kept, one backward."""
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    enc, obj = module.encoder, module.objective
    views = obj.views(batch)
    flat = [t for v in views for t in v]
    embs = [obj.embed(enc, enc.tokenize(c)) for c in chunk(flat, m)]
    losses = obj.loss(list(torch.cat(embs).split([len(v) for v in views])), batch)
    losses["loss"].backward()
    return float(losses["loss"].detach()), _grads(module)


def _cached(module: TrainModule, batch, m: int, seed: int) -> tuple[float, dict]:
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = gradcache_step(module, module.encoder, module.objective, batch, m)
    return float(out["loss"]), _grads(module)


def _rng(device: str) -> torch.Tensor:
    return torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state()


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)


CASES = [
    # (objective, options, batch, mini-batch sizes; 14 / 18 texts: none of 3, 4, 5 divides both)
    ("simcse_unsup", {}, SentenceBatch(SENTENCES), (3, 4, 5)),
    ("pairs", {}, PAIRS, (4, 5)),
    ("simcse_sup", {}, PAIRS, (4,)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "options", "batch", "sizes"), CASES, ids=[c[0] for c in CASES])
def test_cached_gradients_equal_reference(tiny_bert_dir, name, options, batch, sizes, device):
    """On CUDA too when present: the CUDA generator is recorded and replayed as well (and the
    attention kernels must draw dropout the same way with and without a graph)."""
    module = _module(tiny_bert_dir, name, device, **options)
    for m in sizes:
        loss_ref, g_ref = _reference(module, batch, m, seed=123)
        rng_after_ref = _rng(device)
        loss_gc, g_gc = _cached(module, batch, m, seed=123)
        assert loss_gc == pytest.approx(loss_ref, abs=1e-6)
        _assert_same(g_gc, g_ref)
        # the cache leaves the global generator where the plain computation leaves it
        assert torch.equal(_rng(device), rng_after_ref)
    # the objective's training head (SimCSE's MLP) gets gradients too
    if name.startswith("simcse"):
        assert any(k.startswith("objective.mlp") for k in g_gc)


def test_dropout_is_on_and_replay_matters(tiny_bert_dir, monkeypatch):
    """Without the RNG replay the re-encoding draws new masks: gradients are then far off,
    so the tolerance above does detect a wrong dropout mask."""
    module = _module(tiny_bert_dir, "simcse_unsup")
    batch = SentenceBatch(SENTENCES)
    feats = module.encoder.tokenize(SENTENCES)
    assert not torch.equal(module.encoder(feats), module.encoder(feats))  # dropout active
    _, g_ref = _reference(module, batch, 4, seed=7)
    monkeypatch.setattr(gradcache.RngState, "replay", lambda self: contextlib.nullcontext())
    _, g_bad = _cached(module, batch, 4, seed=7)
    assert _max_diff(g_bad, g_ref) > 1e-3


def test_one_mini_batch_equals_plain_forward(tiny_bert_dir):
    """mini_batch_size >= all texts: one chunk, i.e. exactly ``objective.forward``'s single pass."""
    module = _module(tiny_bert_dir, "pairs")
    module.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    loss_plain = module(PAIRS)["loss"]
    loss_plain.backward()
    g_plain = _grads(module)
    loss_gc, g_gc = _cached(module, PAIRS, 100, seed=5)
    assert loss_gc == pytest.approx(float(loss_plain.detach()), abs=1e-6)
    _assert_same(g_gc, g_plain)


def test_auxiliary_mlm_under_cache(tiny_bert_dir):
    """SimCSE's MLM auxiliary runs per row chunk (weighted by rows) while the contrastive loss
    sees the whole batch. Reference: the same forwards and MLM chunks in the same RNG order,
    one backward of ``contrastive + w * sum(share * mlm_chunk)``."""
    torch.manual_seed(0)
    encoder = Encoder.from_pretrained(tiny_bert_dir, pooling="cls_before_pooler", device="cpu")
    objective = SimCSEUnsup(do_mlm=True, mlm_weight=0.5, mlm_probability=0.3)
    objective.setup(encoder)
    module = TrainModule(encoder, objective).train()
    batch, m = SentenceBatch(SENTENCES), 4  # rows per MLM chunk: 4 // 2 views = 2

    module.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    objective.mlm.generator.manual_seed(11)
    flat = SENTENCES + SENTENCES
    embs = [objective.embed(encoder, encoder.tokenize(c)) for c in chunk(flat, m)]
    parts = objective.loss(list(torch.cat(embs).split([7, 7])), batch)
    mlm = sum(
        objective.auxiliary(encoder, slice_batch(batch, s, min(s + 2, 7))) * (min(s + 2, 7) - s) / 7
        for s in range(0, 7, 2)
    )
    total = parts["loss"] + 0.5 * mlm
    total.backward()
    g_ref = _grads(module)

    module.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    objective.mlm.generator.manual_seed(11)
    out = gradcache_step(module, encoder, objective, batch, m)
    assert float(out["loss"]) == pytest.approx(float(total.detach()), abs=1e-5)
    assert float(out["mlm"]) == pytest.approx(float(mlm.detach()), abs=1e-5)
    _assert_same(_grads(module), g_ref)
    assert any(k.startswith("objective.mlm") for k in g_ref)
