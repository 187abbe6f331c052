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
in the re-encoding pass) is off by far more than the tolerance (measured: 8.5). Without any randomness (dropout off) every chunking gives the plain step's
result exactly, the MLM loss included.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from contrasent.data.batches import PairBatch, SentenceBatch
from contrasent.model.encoder import Encoder
from contrasent.objectives import build_objective
from contrasent.objectives.base import View, loss_record
from contrasent.objectives.simcse import SimCSEUnsup
from contrasent.train import gradcache
from contrasent.train.gradcache import gradcache_step
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


def _module(
    tiny_bert_dir, name: str, device: str = "cpu", buckets: int = 1, **options
) -> TrainModule:
    torch.manual_seed(0)
    encoder = Encoder.from_pretrained(tiny_bert_dir, pooling="cls_before_pooler", device=device)
    encoder.length_buckets = buckets  # train.length_buckets: passes by length inside each pass
    objective = build_objective(name, encoder, **options)
    module = TrainModule(encoder, objective)
    module.train()  # dropout on: it is SimCSE's augmentation
    return module


def _grads(module: TrainModule) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _passes(enc, obj, batch, m: int, by_length: bool):
    """The cache's passes, written out: each view cut into chunks of m texts, consecutive, or
    (length buckets on) consecutive in the order of token counts, longest first."""
    for view in obj.views(batch):
        lengths = [len(enc.tokenizer(t)["input_ids"]) for t in view.texts]
        for rows in gradcache.pass_rows(lengths, m, by_length):
            yield view.name, rows, view.take(rows)


def _reference(module: TrainModule, batch, m: int, seed: int) -> tuple[float, dict]:
    """The same mini-batch forwards as the cache, all graphs kept, one backward. Each pass is
    tokenized by itself; with length buckets on each runs as one pass (it is a bucket)."""
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    enc, obj = module.encoder, module.objective
    outs: dict[str, list] = {}
    by_length = enc.length_buckets > 1
    with enc.one_pass() if by_length else contextlib.nullcontext():
        for name, rows, v in _passes(enc, obj, batch, m, by_length):
            out = obj.embed(enc, v, enc.tokenize(v.texts))
            outs.setdefault(name, []).append((rows, out))
    joined = {}
    for name, parts in outs.items():  # back in row order
        rows = [i for r, _ in parts for i in r]
        cat = torch.cat([o for _, o in parts])
        joined[name] = cat[torch.argsort(torch.as_tensor(rows))]
    record = loss_record(obj.loss(joined, batch))
    record["loss"].backward()
    return float(record["loss"].detach()), _grads(module)


def test_pass_rows_by_hand():
    """Consecutive chunks, or chunks of the rows sorted by token count (longest first, ties in
    row order): each chunk then holds rows of about one length."""
    lengths = [5, 9, 3, 9, 7, 2, 5]
    assert gradcache.pass_rows(lengths, 3, by_length=False) == [[0, 1, 2], [3, 4, 5], [6]]
    assert gradcache.pass_rows(lengths, 3, by_length=True) == [[1, 3, 4], [0, 6, 2], [5]]
    assert gradcache.pass_rows(lengths, 10, by_length=True) == [[1, 3, 4, 0, 6, 2, 5]]
    with pytest.raises(ValueError, match="mini-batch size"):
        gradcache.pass_rows(lengths, 0, by_length=True)


def _cached(module: TrainModule, batch, m: int, seed: int) -> tuple[float, dict]:
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = gradcache_step(module.encoder, module.objective, batch, m)
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
    # (objective, options, batch, mini-batch sizes; views of 7 / 6 texts: 3, 4, 5 divide none)
    ("simcse_unsup", {}, SentenceBatch(SENTENCES), (3, 4, 5)),
    ("pairs", {}, PAIRS, (4, 5)),
    ("simcse_sup", {}, PAIRS, (4,)),
    ("simcse_unsup", {"do_mlm": True, "mlm_probability": 0.3}, SentenceBatch(SENTENCES), (4,)),
]


@pytest.mark.parametrize("buckets", [1, 2], ids=["one-pass", "length-buckets"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("name", "options", "batch", "sizes"), CASES, ids=["unsup", "pairs", "sup", "unsup+mlm"]
)
def test_cached_gradients_equal_reference(
    tiny_bert_dir, name, options, batch, sizes, device, buckets
):
    """On CUDA too when present: the CUDA generator is recorded and replayed as well (and the
    attention kernels must draw dropout the same way with and without a graph). With
    ``train.length_buckets`` each mini-batch runs as passes by length, replayed alike."""
    module = _module(tiny_bert_dir, name, device, buckets, **options)
    for m in sizes:
        loss_ref, g_ref = _reference(module, batch, m, seed=123)
        rng_after_ref = _rng(device)
        loss_gc, g_gc = _cached(module, batch, m, seed=123)
        assert loss_gc == pytest.approx(loss_ref, abs=1e-6)
        _assert_same(g_gc, g_ref)
        # the cache leaves the global generator where the plain computation leaves it
        assert torch.equal(_rng(device), rng_after_ref)
    # the objective's training heads (SimCSE's MLP, the MLM head) get gradients too
    if name.startswith("simcse"):
        assert any(k.startswith("objective.mlp") for k in g_gc)
    if options.get("do_mlm"):
        assert any(k.startswith("objective.mlm") for k in g_gc)


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


@pytest.mark.parametrize("buckets", [1, 3], ids=["one-pass", "length-buckets"])
def test_without_randomness_cache_equals_the_plain_step(tiny_bert_dir, buckets):
    """Dropout off: every chunking (and the MLM loss, normalised by the whole batch's masked
    tokens, masks keyed per row) gives exactly the plain step's loss and gradients; the cache
    with passes by length (``train.length_buckets``) too, against the plain one-pass step."""
    module = _module(tiny_bert_dir, "simcse_unsup", do_mlm=True, mlm_probability=0.3).eval()
    batch = SentenceBatch(SENTENCES, index=4)
    module.zero_grad(set_to_none=True)
    plain = module(batch)
    plain["loss"].backward()
    g_plain = _grads(module)
    module.encoder.length_buckets = buckets
    for m in (3, 100):
        loss_gc, g_gc = _cached(module, batch, m, seed=0)
        assert loss_gc == pytest.approx(float(plain["loss"].detach()), abs=1e-6)
        _assert_same(g_gc, g_plain)


class _Augment:
    """A view augmentation drawing from the global generator: shuffled positions and zeroed
    token rows of the embedding output (ConSERT-like)."""

    def positions(self, position_ids, attention_mask):
        perm = torch.stack([torch.randperm(position_ids.shape[1]) for _ in position_ids])
        return position_ids.gather(1, perm.to(position_ids.device))

    def embeddings(self, output, attention_mask):
        keep = torch.rand(output.shape[:2], device=output.device) > 0.3
        return output * keep[..., None]


class _AugmentedViews(SimCSEUnsup):
    def text_views(self, batch):
        return [View("anchor", batch.texts, augment=_Augment()), View("positive", batch.texts)]


def test_view_augmentations_are_replayed(tiny_bert_dir, monkeypatch):
    """Each view's augmentation is randomness of its passes: recorded and replayed like dropout
    (and mini-batches never mix the augmented view with the plain one)."""
    torch.manual_seed(0)
    encoder = Encoder.from_pretrained(tiny_bert_dir, pooling="cls_before_pooler", device="cpu")
    objective = _AugmentedViews()
    objective.setup(encoder)
    module = TrainModule(encoder, objective).eval()  # dropout off: only the augmentation draws
    batch = SentenceBatch(SENTENCES)
    feats = encoder.tokenize(SENTENCES)
    assert not torch.equal(encoder(feats, augment=_Augment()), encoder(feats))
    _, g_ref = _reference(module, batch, 3, seed=9)
    _, g_gc = _cached(module, batch, 3, seed=9)
    _assert_same(g_gc, g_ref)
    monkeypatch.setattr(gradcache.RngState, "replay", lambda self: contextlib.nullcontext())
    _, g_bad = _cached(module, batch, 3, seed=9)
    assert _max_diff(g_bad, g_ref) > 1e-3
