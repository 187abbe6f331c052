"""ConSERT's objectives wired on the shared contract: views, losses by hand, the gradient cache
replaying the views, two processes == one, the encoder's dropout switch and the saved config,
the refusals, and the ``sts_texts`` data kind."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import gloo_group
from contrasent.augment.embedding import FeatureCutoff, TokenCutoff, TokenShuffle
from contrasent.core.errors import UserError
from contrasent.data.batches import NLIBatch, SentenceBatch
from contrasent.model.encoder import Encoder
from contrasent.objectives import build_objective
from contrasent.objectives.base import loss_record
from contrasent.objectives.inbatch import gathered_nt_xent
from contrasent.objectives.nli_head import dropout_off
from contrasent.train import gradcache
from contrasent.train.config import TrainConfig
from contrasent.train.gradcache import gradcache_step
from contrasent.train.loop import TrainModule, train

TEXTS = [
    "A man is playing a guitar.",
    "Two dogs run across a snowy field.",
    "The stock market fell sharply on Monday.",
    "She is slicing an onion in the kitchen.",
    "A child rides a red bicycle down the street.",
    "The committee postponed its decision until next year.",
    "Rain is expected over the weekend.",
    "He reads the newspaper every morning.",
]
NLI = NLIBatch(
    premises=TEXTS[:6],
    hypotheses=[
        "Someone plays an instrument.",
        "Cats sleep indoors.",
        "Shares dropped on Monday.",
        "A woman is cooking.",
        "A kid is sitting at home.",
        "The decision was delayed.",
    ],
    labels=[0, 2, 0, 1, 2, 0],
)


def encoder(tiny_bert_dir, dtype=torch.float32) -> Encoder:
    enc = Encoder.from_pretrained(tiny_bert_dir, pooling="mean", device="cpu").to(dtype)
    return enc.train()  # dropout modules active unless the objective switches them off


def obj(name, enc, **options):
    torch.manual_seed(0)  # the NLI head's initialisation
    return build_objective(name, enc, **options)


# ------------------------------------------------------------------ wiring
def test_views_of_each_objective():
    c = build_objective("consert")
    v = c.views(SentenceBatch(TEXTS))
    assert [x.name for x in v] == ["view1", "view2"] and v[0].texts == TEXTS
    assert isinstance(v[0].augment, FeatureCutoff) and v[0].augment.rate == 0.2
    assert isinstance(v[1].augment, TokenShuffle)  # the paper's best pair, the unsup script's
    none = build_objective("consert", view1="none", view2="token_cutoff").views(
        SentenceBatch(TEXTS)
    )
    assert none[0].augment is None and none[1].augment.rate == 0.15  # the paper's default rate
    joint = build_objective("consert_joint").views(NLI)
    assert [x.name for x in joint] == ["premise", "hypothesis", "premise_2", "hypothesis_2"]
    assert isinstance(joint[2].augment, TokenCutoff) and joint[2].augment.rate == 0.1
    assert joint[0].shares_pass_with(joint[1])  # the classifier's pair: one encoder pass
    six = build_objective("consert_joint", view1="shuffle").views(NLI)
    assert [x.name for x in six][2:4] == ["premise_1", "hypothesis_1"]
    assert [x.name for x in build_objective("nli_softmax").views(NLI)] == ["premise", "hypothesis"]


def test_consert_loss_is_weighted_nt_xent_of_the_two_views(tiny_bert_dir):
    enc = encoder(tiny_bert_dir, torch.float64)
    o = obj("consert", enc, weight=0.3)
    batch = SentenceBatch(TEXTS)
    torch.manual_seed(5)
    out = o(enc, batch)
    torch.manual_seed(5)  # by hand: the same draws, dropout modules at 0
    f = enc.tokenize(TEXTS)
    with dropout_off(enc.model):
        z1 = enc(f, augment=FeatureCutoff(0.2))
        z2 = enc(f, augment=TokenShuffle())
    want, acc = gathered_nt_xent(z1, z2, temperature=0.1)
    torch.testing.assert_close(out["loss"], 0.3 * want)
    torch.testing.assert_close(out["contrastive"], want.detach())
    assert out["accuracy"] == acc


def test_joint_loss_is_ce_plus_alpha_times_two_nt_xents(tiny_bert_dir):
    enc = encoder(tiny_bert_dir, torch.float64)
    o = obj("consert_joint", enc, alpha=0.3, max_square=True)
    torch.manual_seed(2)
    out = o(enc, NLI)
    torch.manual_seed(2)
    with dropout_off(enc.model):
        pair = enc(enc.tokenize(NLI.premises + NLI.hypotheses))  # one pass, as the loop does
        u, v = pair[:6], pair[6:]
        cut = TokenCutoff(0.1)
        u2 = enc(enc.tokenize(NLI.premises), augment=cut)
        v2 = enc(enc.tokenize(NLI.hypotheses), augment=cut)
    ce = o.head.loss(u, v, torch.tensor(NLI.labels))
    want = ce + 0.3 * (
        gathered_nt_xent(u, u2, temperature=0.1)[0] + gathered_nt_xent(v, v2, temperature=0.1)[0]
    )
    torch.testing.assert_close(out["loss"], want)
    torch.testing.assert_close(out["ce"], ce.detach())
    assert o.head.classifier.in_features == 4 * enc.hidden_size  # [u; v; |u-v|; max(u,v)^2]


def test_nli_softmax_equals_sentence_transformers_softmax_loss(tiny_bert_dir, tmp_path):
    """The whole objective on a saved model against SoftmaxLoss on the same model: loss and
    every encoder and classifier gradient."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import SoftmaxLoss

    Encoder.from_pretrained(tiny_bert_dir, pooling="mean", device="cpu").save(tmp_path / "m")
    enc = Encoder.from_pretrained(tmp_path / "m", device="cpu").eval()
    o = obj("nli_softmax", enc)
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu").eval()
    theirs_fn = SoftmaxLoss(st, enc.hidden_size, 3)
    theirs_fn.classifier.load_state_dict(o.head.classifier.state_dict())
    ours = o(enc, NLI)["loss"]
    feats = [st.tokenize(NLI.premises), st.tokenize(NLI.hypotheses)]
    theirs = theirs_fn(feats, torch.tensor(NLI.labels))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    ours.backward()
    theirs.backward()
    g_st = dict(st[0].auto_model.named_parameters())
    for name, p in enc.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, g_st[name].grad, atol=1e-6, rtol=1e-4, msg=name)
    torch.testing.assert_close(o.head.classifier.weight.grad, theirs_fn.classifier.weight.grad)


def test_adversarial_objective_adds_fgv_noise_of_the_ce_gradient(tiny_bert_dir):
    enc = encoder(tiny_bert_dir, torch.float64)
    o = obj("consert_joint_adv", enc, epsilon=0.05)
    out = o(enc, NLI)
    with dropout_off(enc.model):
        plain = [enc(enc.tokenize(t)) for t in (NLI.premises, NLI.hypotheses)]
    torch.testing.assert_close(out["ce"], o.head.loss(*plain, torch.tensor(NLI.labels)).detach())
    assert out["contrastive_premise"] > 0 and out["loss"] > out["ce"]
    out["loss"].backward()  # one backward through both forwards
    assert enc.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert o.head.classifier.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ the gradient cache
def _passes(o, batch, m):
    for view in o.views(batch):
        for a in range(0, len(view), m):
            yield view.name, view.slice(a, a + m)


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _reference(module, batch, m, seed):
    """The cache's mini-batch forwards, all graphs kept, one backward (see test_gradcache)."""
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    enc, o = module.encoder, module.objective
    outs: dict[str, list] = {}
    for name, v in _passes(o, batch, m):
        outs.setdefault(name, []).append(o.embed(enc, v, enc.tokenize(v.texts)))
    record = loss_record(o.loss({k: torch.cat(v) for k, v in outs.items()}, batch))
    record["loss"].backward()
    return float(record["loss"].detach()), _grads(module)


def _cached(module, batch, m, seed):
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    return float(gradcache_step(module.encoder, module.objective, batch, m)["loss"]), _grads(module)


@pytest.mark.parametrize(
    ("name", "options", "batch"),
    [
        ("consert", {}, SentenceBatch(TEXTS)),
        ("consert", {"view1": "dropout", "view2": "token_cutoff"}, SentenceBatch(TEXTS)),
        ("consert_joint", {"view1": "feature_cutoff"}, NLI),
    ],
    ids=["cutoff+shuffle", "dropout+token", "joint"],
)
def test_views_are_replayed_under_the_gradient_cache(
    tiny_bert_dir, monkeypatch, name, options, batch
):
    enc = encoder(tiny_bert_dir)
    module = TrainModule(enc, obj(name, enc, **options))
    loss_ref, g_ref = _reference(module, batch, 3, seed=11)
    loss_gc, g_gc = _cached(module, batch, 3, seed=11)
    assert loss_gc == pytest.approx(loss_ref, abs=1e-6)
    assert g_gc.keys() == g_ref.keys()
    for k in g_ref:
        torch.testing.assert_close(g_gc[k], g_ref[k], atol=1e-5, rtol=1e-5, msg=k)
    if name == "consert_joint":
        assert any(k.startswith("objective.head") for k in g_gc)
    # without the replay the second pass draws other views: the gradients are off
    monkeypatch.setattr(gradcache.RngState, "replay", lambda self: contextlib.nullcontext())
    _, g_bad = _cached(module, batch, 3, seed=11)
    assert max((g_bad[k] - g_ref[k]).abs().max().item() for k in g_ref) > 1e-3


# ------------------------------------------------------------------ two processes
def _consert_step(tiny_dir, rows: slice, seeds: list[int]):
    """Loss and encoder gradients of consert on TEXTS[rows]; each process's slice draws its
    views from its own seed (as each process's global generator does in training)."""
    enc = encoder(tiny_dir, torch.float64)
    o = obj("consert", enc)
    texts = TEXTS[rows]
    per = len(texts) // len(seeds)
    outs: dict[str, list] = {"view1": [], "view2": []}
    for i, seed in enumerate(seeds):  # embed exactly as the plain step does, slice by slice
        torch.manual_seed(seed)
        for view in o.views(SentenceBatch(texts[i * per : (i + 1) * per])):
            outs[view.name].append(o.embed(enc, view, enc.tokenize(view.texts)))
    parts = o.loss({k: torch.cat(v) for k, v in outs.items()}, SentenceBatch(texts))
    loss = loss_record(parts)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    return loss.item(), grads


def _worker(rank: int, world: int, tiny_dir: str, out_dir: str) -> None:
    with gloo_group(rank, world, out_dir):
        half = len(TEXTS) // world
        loss, grads = _consert_step(tiny_dir, slice(rank * half, (rank + 1) * half), [100 + rank])
        t = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce(t)
        for g in grads.values():  # DDP: average over processes
            dist.all_reduce(g)
            g /= world
        torch.save((t.item() / world, grads), Path(out_dir) / f"rank{rank}.pt")


def test_two_gloo_processes_equal_one_process(tiny_bert_dir, tmp_path):
    mp.spawn(_worker, args=(2, str(tiny_bert_dir), str(tmp_path)), nprocs=2, join=True)
    ref_loss, ref_grads = _consert_step(str(tiny_bert_dir), slice(0, len(TEXTS)), [100, 101])
    for r in range(2):
        loss, grads = torch.load(tmp_path / f"rank{r}.pt")
        assert loss == pytest.approx(ref_loss, rel=1e-10)
        assert grads.keys() == ref_grads.keys()
        for k, g in ref_grads.items():
            torch.testing.assert_close(grads[k], g, atol=1e-12, rtol=1e-8, msg=k)


# ------------------------------------------------------------------ dropout
def test_encoder_dropout_off_in_embed_and_restored_after(tiny_bert_dir):
    enc = encoder(tiny_bert_dir)
    f = enc.tokenize(TEXTS)
    off, on = obj("consert", enc), obj("consert", enc, encoder_dropout=True)
    view = off.views(SentenceBatch(TEXTS))[0]
    torch.manual_seed(0)
    a = off.embed(enc, view, f)
    torch.manual_seed(0)
    b = off.embed(enc, view, f)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # same view draws, no dropout noise
    torch.manual_seed(0)
    c = on.embed(enc, view, f)
    assert (c - a).abs().max() > 1e-4  # with the encoder's dropout: another output
    rates = {m.p for m in enc.model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.1}  # every rate restored after the forward


def _cfg(tiny_dir, out, objective, data, **train):
    return TrainConfig.from_dict({
        "model": {"name_or_path": str(tiny_dir), "pooling": "mean"},
        "objective": objective,
        "data": data,
        "train": {"batch_size": 8, "max_steps": 2, **train},
        "eval": {"at_end": False},
        "checkpoint": {"every_steps": 0},
        "logging": {"tensorboard": False, "progress_bar": False, "log_every": 1},
        "output_dir": str(out),
    })  # fmt: skip


def test_saved_model_keeps_the_original_dropout_rates(tiny_bert_dir, senteval_dir, tmp_path):
    data = {"kind": "sts_texts", "path": str(senteval_dir), "max_seq_length": 16}
    result = train(_cfg(tiny_bert_dir, tmp_path / "r", {"name": "consert"}, data))
    assert result.steps == 2 and result.last_train["contrastive"] > 0
    config = json.loads((result.final_dir / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.1 and config["attention_probs_dropout_prob"] == 0.1
    reloaded = Encoder.from_pretrained(result.final_dir, device="cpu")
    assert {m.p for m in reloaded.model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("objective", "message"),
    [
        (
            {"name": "consert", "view1": "shufle"},
            "view1: unknown view 'shufle'; did you mean 'shuffle'",
        ),
        (
            {"name": "consert", "view2": "feature_cutoff", "view2_rate": 1.0},
            r"rate must be in \[0, 1\)",
        ),
        ({"name": "consert", "view1_rate": -0.1}, r"rate must be in \[0, 1\)"),
        ({"name": "consert", "view2": "adversarial"}, "needs a supervised loss"),
        ({"name": "consert_joint", "view2": "adv"}, "use objective consert_joint_adv"),
        ({"name": "consert_joint_adv", "epsilon": -1.0}, "epsilon must be > 0"),
        ({"name": "consert", "temperature": 0.0}, "temperature must be > 0"),
    ],
)
def test_bad_objective_options_are_refused_before_training(
    objective, message, tiny_bert_dir, tmp_path
):
    cfg = _cfg(tiny_bert_dir, tmp_path / "r", objective, {"kind": "sts_texts", "path": "x"})
    with pytest.raises(UserError, match=message):
        cfg.validate()


def test_adversarial_objective_refuses_the_gradient_cache(tiny_bert_dir, senteval_dir, tmp_path):
    data = {"kind": "nli_pairs", "path": str(senteval_dir / "SNLI"), "split": "dev"}
    cfg = _cfg(
        tiny_bert_dir, tmp_path / "r", {"name": "consert_joint_adv"}, data, mini_batch_size=4
    )
    with pytest.raises(UserError, match="does not run under the gradient cache.*adversarial view"):
        train(cfg)
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_nli_label_outside_the_three_is_refused_before_training(tiny_bert_dir, tmp_path):
    snli = tmp_path / "SNLI"
    snli.mkdir()
    (snli / "s1.train").write_text("a man sleeps\na dog runs\n")
    (snli / "s2.train").write_text("a person rests\nan animal moves\n")
    (snli / "labels.train").write_text("entailment\nmaybe\n")
    cfg = _cfg(
        tiny_bert_dir,
        tmp_path / "r",
        {"name": "nli_softmax"},
        {"kind": "nli_pairs", "path": str(snli)},
    )
    with pytest.raises(UserError, match=r"labels.train:2: unknown label 'maybe'"):
        train(cfg)
    assert not (tmp_path / "r" / "final").exists()
    with pytest.raises(ValueError, match="NLI labels must be 0..2"):
        NLIBatch(["a"], ["b"], [3])


def test_objective_and_data_must_fit(tiny_bert_dir, senteval_dir, tmp_path):
    cfg = _cfg(
        tiny_bert_dir, tmp_path / "r", {"name": "consert_joint"}, {"kind": "sts_texts", "path": "x"}
    )
    with pytest.raises(UserError, match="consumes NLIBatch.*use data.kind nli_pairs"):
        cfg.validate()


# ------------------------------------------------------------------ sts_texts
def test_sts_texts_default_and_reference_sets(senteval_dir):
    from contrasent.data.kinds.sts_texts import sts_pairs, sts_texts

    ref = sts_texts(senteval_dir, "all", dedup=False)
    assert len(ref) == 89192  # the reference's "all 89192 unlabeled texts"
    sizes = {k: 2 * len(v) for k, v in sts_pairs(senteval_dir, "all").items()}
    assert sizes["STS15"] == 17000 and sizes["STS16"] == 18366  # unscored pairs included
    assert sizes["SICKRelatedness.train"] == 9000 and sizes["STSBenchmark.dev"] == 3000
    default = sts_texts(senteval_dir)
    assert len(default) == len(set(default)) == 44024  # the 7 test sets, each sentence once
    assert set(default) <= set(ref)
    assert len(set(ref)) == 47421


def test_sts_texts_stream_and_options(senteval_dir):
    from contrasent.data.registry import DataSpec, build_stream

    spec = DataSpec(
        kind="sts_texts", path=str(senteval_dir), options={"splits": "all", "dedup": False}
    )
    stream = build_stream(spec, batch_size=64, seed=1)
    assert stream.steps_per_epoch == 89192 // 64
    first = next(stream)
    assert isinstance(first, SentenceBatch) and len(first) == 64
    again = next(build_stream(spec, batch_size=64, seed=1))
    assert again.texts == first.texts  # keyed shuffle: deterministic
    assert next(build_stream(spec, batch_size=64, seed=2)).texts != first.texts
    with pytest.raises(UserError, match="splits"):
        build_stream(
            DataSpec(kind="sts_texts", path=str(senteval_dir), options={"splits": "dev"}), 8, 0
        )
    with pytest.raises(UserError, match="unknown option 'dedupe'.*did you mean dedup"):
        build_stream(
            DataSpec(kind="sts_texts", path=str(senteval_dir), options={"dedupe": 1}), 8, 0
        )
    with pytest.raises(UserError, match="does not exist"):
        build_stream(DataSpec(kind="sts_texts", path=str(senteval_dir / "nope")), 8, 0)
