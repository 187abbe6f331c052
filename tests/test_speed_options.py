"""Speed options change how a step runs, never what it computes.

``train.length_buckets``: the encoder's passes over rows of similar length equal the one padded
pass (dropout off: with dropout the draws differ by construction, other shapes draw other masks)
for embeddings, every objective's loss and the gradients. ``train.compile``: a compiled encoder
embeds like the eager one (slow: compiling takes a minute on a CPU).
"""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from contrasent.data.batches import PairBatch, SentenceBatch
from contrasent.model import passes as encoder_module
from contrasent.model.encoder import SHARED_LOOKUP_TYPES, Encoder
from contrasent.model.passes import length_buckets
from contrasent.objectives import build_objective
from families import FAMILIES

TEXTS = [
    "A man is playing a guitar.",
    "Dogs.",
    "The committee postponed its decision on the new budget until the end of next year.",
    "She is slicing an onion in the kitchen while the radio plays an old song.",
    "Rain.",
    "Two dogs run across a snowy field.",
    "Shares dropped steeply on Monday after the announcement of weaker profits.",
    "Hi",
]
PAIRS = PairBatch(
    anchors=TEXTS[:4],
    positives=["Someone plays.", "Dogs are running through deep snow in the hills.", "No.", "A"],
    negatives=[
        ["A man sleeps.", "Cats", "The committee decided at once, to general surprise.", "x"]
    ],
)


def _slots(parts: list[tuple[list[int], int]]) -> int:
    return sum(len(rows) * longest for rows, longest in parts)


def _brute_force(lengths: list[int], k: int) -> int:
    """Fewest padded slots of any split of the sorted rows into k contiguous buckets."""
    srt = sorted(lengths, reverse=True)
    best = None
    for cuts in itertools.combinations(range(1, len(srt)), k - 1):
        bounds = [0, *cuts, len(srt)]
        slots = sum((b - a) * srt[a] for a, b in itertools.pairwise(bounds))
        best = slots if best is None else min(best, slots)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_length_buckets_are_an_optimal_split(seed, monkeypatch):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 9))]
    k = rng.randint(1, 4)
    monkeypatch.setattr(encoder_module, "BUCKET_MIN_SAVING", 0.0)
    parts = length_buckets(lengths, k)
    rows = sorted(r for part, _ in parts for r in part)
    assert rows == list(range(len(lengths)))  # every row exactly once
    assert all(longest == max(lengths[r] for r in part) for part, longest in parts)
    assert len(parts) <= k
    assert _slots(parts) == _brute_force(lengths, min(k, len(lengths)))


def test_a_bucket_is_added_only_when_it_saves_enough():
    # 30 rows of 32 and one of 31: a second pass would save 1 slot of 991
    assert len(length_buckets([32] * 30 + [31], 4)) == 1
    # thirds of 32, 20 and 10 tokens: three passes save 38% of the slots
    parts = length_buckets([10] * 30 + [32] * 30 + [20] * 30, 4)
    assert [(len(r), m) for r, m in parts] == [(30, 32), (30, 20), (30, 10)]
    assert parts[0][0] == list(range(30, 60))  # rows of equal length stay in row order


def _encoder(tiny_bert_dir, buckets: int, pooling: str = "mean") -> Encoder:
    torch.manual_seed(0)
    enc = Encoder.from_pretrained(tiny_bert_dir, pooling=pooling, device="cpu").double()
    enc.length_buckets = buckets
    return enc.eval()  # dropout off: bucketing must not change any number


def _passes(enc: Encoder) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []

    def record(_module, _args, kwargs):
        ids = kwargs.get("input_ids")
        shapes.append(tuple((kwargs["inputs_embeds"] if ids is None else ids).shape[:2]))

    enc.model.register_forward_pre_hook(record, with_kwargs=True)
    return shapes


def _assert_same(one: Encoder, bucketed: Encoder, a: torch.Tensor, b: torch.Tensor) -> None:
    """The embeddings ``a`` (one pass), ``b`` (buckets) and the gradients they lead to agree."""
    torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10)
    a.pow(2).sum().backward()
    b.pow(2).sum().backward()
    for (name, p), q in zip(one.named_parameters(), bucketed.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-12, rtol=1e-9, msg=name)


@pytest.mark.parametrize("pooling", ["mean", "cls_before_pooler", "cls", "avg_first_last"])
def test_bucketed_forward_equals_one_pass(tiny_bert_dir, pooling):
    one, bucketed = _encoder(tiny_bert_dir, 1, pooling), _encoder(tiny_bert_dir, 3, pooling)
    shapes = _passes(bucketed)
    feats = one.tokenize(TEXTS)
    a, b = one(feats), bucketed(feats)
    assert len(shapes) == 3 and max(s[1] for s in shapes) == feats["input_ids"].shape[1]
    assert min(s[1] for s in shapes) < 6  # the short rows ran without the long rows' padding
    _assert_same(one, bucketed, a, b)


def test_the_shared_lookup_covers_the_tested_families_only():
    assert {f.model_type for f in FAMILIES.values()} == SHARED_LOOKUP_TYPES


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bucketed_passes_share_one_word_lookup(family_dir, family):
    """The word embeddings of all rows are looked up once and the buckets take their rows of it
    (the lookup's backward, a dense [vocab, H] gradient, then runs once per pass, not once per
    bucket): in every family the result is the one pass's, values and gradients, with the
    model's own position ids (RoBERTa-style ones counted from the ids: a pad token inside a
    text keeps its padding position)."""
    one, bucketed = _encoder(family_dir(family), 1), _encoder(family_dir(family), 3)
    shapes, lookups = _passes(bucketed), []
    words = bucketed.model.get_input_embeddings()
    words.register_forward_hook(lambda _m, args, _out: lookups.append(tuple(args[0].shape)))
    texts = [*TEXTS, f"two words {bucketed.tokenizer.pad_token} and three more words"]
    feats = one.tokenize(texts)
    a, b = one(feats), bucketed(feats)
    assert len(shapes) == 3 and lookups == [tuple(feats["input_ids"].shape)]
    real = feats["input_ids"][-1][feats["attention_mask"][-1].bool()]
    assert real.eq(bucketed.tokenizer.pad_token_id).sum() == 1  # the pad inside the text
    _assert_same(one, bucketed, a, b)


@pytest.mark.parametrize(
    "name,options,batch",
    [
        ("simcse_unsup", {}, SentenceBatch(TEXTS)),
        ("simcse_unsup", {"do_mlm": True, "mlm_probability": 0.3}, SentenceBatch(TEXTS)),
        ("simcse_sup", {"hard_negative_weight": 0.5}, PAIRS),
        ("pairs", {}, PAIRS),
    ],
)
def test_every_objective_gets_the_same_loss_and_gradients(tiny_bert_dir, name, options, batch):
    results = []
    for buckets in (1, 3):
        enc = _encoder(tiny_bert_dir, buckets)
        obj = build_objective(name, enc, **options).double()
        record = obj(enc, batch)
        record["loss"].backward()
        grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
        results.append((record, grads))
    (ref, ref_grads), (got, grads) = results
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], atol=1e-12, rtol=1e-10, msg=key)
    assert grads.keys() == ref_grads.keys()
    for key, g in ref_grads.items():
        torch.testing.assert_close(grads[key], g, atol=1e-12, rtol=1e-9, msg=key)


def test_nothing_to_trim_runs_one_pass(tiny_bert_dir):
    enc = _encoder(tiny_bert_dir, 4)
    shapes = _passes(enc)
    enc(enc.tokenize(["one two three", "four five six"]))  # equal lengths
    assert len(shapes) == 1


def test_length_buckets_is_validated_and_set_by_the_loop(tmp_path, tiny_bert_dir, shared_data):
    from contrasent.core.errors import UserError
    from contrasent.train.config import TrainConfig

    cfg = {
        "model": {"name_or_path": str(tiny_bert_dir)},
        "data": {"kind": "text", "path": str(shared_data / "corpus" / "wiki1m-head.txt")},
        "train": {"length_buckets": 0, "max_steps": 1},
        "output_dir": str(tmp_path / "run"),
    }
    with pytest.raises(UserError, match="train.length_buckets must be >= 1"):
        TrainConfig.from_dict(cfg).validate(1)


@pytest.mark.slow
def test_compiled_encoder_embeds_like_eager_and_reports_compile_time(
    tmp_path, tiny_bert_dir, shared_data
):
    from contrasent.train.loop import train
    from contrasent.train.runtime import compile_encoder

    eager = _encoder(tiny_bert_dir, 1).float()
    compiled = _encoder(tiny_bert_dir, 1).float()
    assert compile_encoder(compiled)
    for texts in (TEXTS, TEXTS[:3]):  # two shapes: dynamic, no failure on the second
        feats = eager.tokenize(texts)
        torch.testing.assert_close(compiled(feats), eager(feats), atol=1e-5, rtol=1e-5)
    result = train(
        {
            "model": {"name_or_path": str(tiny_bert_dir)},
            "data": {
                "kind": "text",
                "path": str(shared_data / "corpus" / "wiki1m-head.txt"),
                "max_seq_length": 16,
            },
            "train": {"batch_size": 8, "max_steps": 2, "compile": True, "length_buckets": 2},
            "eval": {"at_end": False},
            "checkpoint": {"every_steps": 0},
            "logging": {"tensorboard": False, "progress_bar": False},
            "output_dir": str(tmp_path / "run"),
        }
    )
    records = [
        json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()
    ]
    compile_records = [r for r in records if r["kind"] == "compile"]
    assert len(compile_records) == 1 and compile_records[0]["first_step_s"] > 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if r["kind"] == "train")
