"""DeCLUTR's objective: its views, the one-pass masked anchors, the loss against its pieces, the
gradient cache and two gloo processes against the plain one-process step, exact resume, and a
learning signal on held-out documents."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import build_tiny_bert, gloo_group
from contrasent.core import distributed as D
from contrasent.core.errors import UserError
from contrasent.data.documents import read_documents
from contrasent.data.registry import DataSpec, build_stream
from contrasent.data.span_batch import SpanBatch
from contrasent.model.encoder import Encoder
from contrasent.objectives import build_objective, objective_config
from contrasent.objectives.declutr import MASKED_ANCHORS, DeCLUTR, mean_positives
from contrasent.objectives.inbatch import gathered_nt_xent
from contrasent.objectives.mlm import MLMAuxiliary
from contrasent.train import checkpoint as ckpt
from contrasent.train.config import (
    CheckpointConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    check_objective_and_data,
)
from contrasent.train.gradcache import gradcache_step
from contrasent.train.loop import train
from test_resume import STEPS, Killed, _assert_bitwise, _kill_after, _state, _train_steps

SPANS = {"min_span_len": 6, "max_span_len": 16}  # documents need 2 * 16 * 2 = 64 tokens


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a loaded shared CPU two threads
    spin against each other (measured: 10x slower steps); restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def documents(tmp_path_factory, shared_data) -> Path:
    """40 documents (100-word windows of WikiText articles), one a line, plus one too short."""
    wiki = shared_data / "corpus" / "wikitext-2-raw-test.txt"
    windows = read_documents(wiki, "wikitext", window_words=100)
    docs = [d.text for _, d in zip(range(40), windows, strict=False)]
    path = tmp_path_factory.mktemp("docs") / "docs.txt"
    path.write_text("\n".join([*docs[:20], "far too short", *docs[20:]]) + "\n")
    return path


@pytest.fixture(scope="module")
def quiet_bert(tmp_path_factory, minilm_dir) -> Path:
    """The tiny BERT without dropout: every split of a batch computes the same function."""
    path = tmp_path_factory.mktemp("quiet_bert")
    return build_tiny_bert(
        path, minilm_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


def span_batch(documents: Path, tokenizer, size: int = 4, index: int = 0) -> SpanBatch:
    stream = build_stream(
        DataSpec(kind="documents", path=str(documents), options=SPANS), size, 5, tokenizer
    )
    for _ in range(index):
        next(stream)
    return next(stream)


def encoder(path: Path, double: bool = True) -> Encoder:
    enc = Encoder.from_pretrained(str(path), pooling="mean", device="cpu")
    enc = enc.double() if double else enc
    enc.eval()
    return enc


def test_views_layout_and_keys(quiet_bert, documents):
    enc = encoder(quiet_bert)
    batch = span_batch(documents, enc.tokenizer)
    views = build_objective("declutr", enc).views(batch)
    assert [(v.name, v.mode) for v in views] == [
        ("anchors", MASKED_ANCHORS),
        ("positives", "embed"),
    ]
    assert views[0].texts == batch.anchor_texts and len(views[0]) == 8
    assert views[1].texts == batch.positive_texts and len(views[1]) == 16
    assert views[0].keys == [(batch.index, d, a) for d in range(4) for a in range(2)]
    separate = build_objective("declutr", enc, mlm_pass="separate").views(batch)
    assert [(v.name, v.mode) for v in separate] == [
        ("anchors", "embed"),
        ("positives", "embed"),
        ("mlm", MLMAuxiliary.MODE),
    ]
    assert separate[2].texts == batch.anchor_texts and separate[2].keys == views[0].keys
    assert [v.name for v in build_objective("declutr", enc, mlm=False).views(batch)] == [
        "anchors",
        "positives",
    ]


def test_masked_anchors_are_one_forward_giving_embedding_and_mlm(quiet_bert, documents):
    """The reference's pass: ONE encoder forward of the masked anchors yields both the pooled
    anchor embedding and the MLM sums; equal to embedding the masked ids and to the separate
    MLM pass with the same keyed masks."""
    torch.manual_seed(0)
    enc = encoder(quiet_bert)
    obj = build_objective("declutr", enc, mlm_probability=0.3).double()
    batch = span_batch(documents, enc.tokenizer)
    view = obj.views(batch)[0]
    features = enc.tokenize(view.texts)
    calls = []
    handle = enc.model.register_forward_hook(lambda *_: calls.append(1))
    out = obj.embed(enc, view, features)
    handle.remove()
    assert len(calls) == 1 and out.shape == (8, enc.hidden_size + 2)
    inputs, labels = obj.mlm.mask(enc, view, features)
    assert (labels != -100).any() and not torch.equal(inputs, features["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(out[:, :-2], enc({**features, "input_ids": inputs}))
        alone = obj.mlm.row_losses(enc, dataclasses.replace(view, mode="mlm"), features)
    torch.testing.assert_close(out[:, -2:], alone)
    assert out[:, -1].sum().item() == (labels != -100).sum().item()


def test_loss_is_nt_xent_of_mean_positives_plus_global_mlm_mean(documents, minilm_dir):
    from transformers import AutoTokenizer

    batch = span_batch(documents, AutoTokenizer.from_pretrained(str(minilm_dir)))
    obj = DeCLUTR(objective_config("declutr", {"temperature": 0.1}))
    g = torch.Generator().manual_seed(1)
    anchors = torch.randn(8, 6, generator=g, dtype=torch.float64)
    mlm = torch.tensor([[3.0, 2], [0, 0], [7.5, 3], [1, 1], [0, 0], [2, 2], [4, 1], [0, 0]])
    positives = torch.randn(16, 6, generator=g, dtype=torch.float64)
    obj.mlm.head = torch.nn.Identity()  # part() needs no head; _mlm() checks setup ran
    parts = obj.loss(
        {"anchors": torch.cat([anchors, mlm.double()], 1), "positives": positives}, batch
    )
    want, acc = gathered_nt_xent(anchors, mean_positives(positives, 2), temperature=0.1)
    assert parts["contrastive"].value.item() == pytest.approx(want.item(), rel=1e-12)
    assert parts["mlm"].value.item() == pytest.approx(17.5 / 9) and parts["mlm"].weight == 1.0
    assert parts["accuracy"].item() == acc.item()
    # a data count, logged: the fixture's "far too short" line (and any short last window)
    assert parts["short_documents"].item() == batch.short_documents >= 1
    # the positive that goes with anchor i is the mean of rows 2i, 2i+1 (anchor-major layout)
    torch.testing.assert_close(mean_positives(positives, 2)[3], positives[6:8].mean(0))


@pytest.mark.parametrize(
    "options",
    [{}, {"mlm_pass": "separate"}, {"mlm": False}],
    ids=["mlm-in-anchor-pass", "mlm-separate", "no-mlm"],
)
def test_gradient_cache_equals_the_plain_step(quiet_bert, documents, options):
    def run(mini_batch: int | None):
        torch.manual_seed(0)  # same fresh MLM head
        enc = encoder(quiet_bert)
        obj = build_objective("declutr", enc, mlm_probability=0.3, **options).double()
        batch = span_batch(documents, enc.tokenizer, index=2)
        if mini_batch is None:
            record = obj(enc, batch)
            record["loss"].backward()
        else:
            record = gradcache_step(enc, obj, batch, mini_batch)
        named = [*enc.named_parameters(), *obj.named_parameters()]
        return record, {n: p.grad.clone() for n, p in named if p.grad is not None}

    plain, plain_grads = run(None)
    for mini in (3, 5):
        cached, grads = run(mini)
        for k in plain:
            assert cached[k].item() == pytest.approx(plain[k].item(), rel=1e-10), k
        assert grads.keys() == plain_grads.keys()
        for name, g in plain_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-8, atol=1e-12, msg=name)
    if options.get("mlm", True):
        assert plain["mlm"].item() > 0 and any("mlm" in n for n in plain_grads)


def test_length_buckets_leave_the_masked_anchor_pass_whole(quiet_bert, documents):
    """train.length_buckets splits the positives' pass, never the masked anchors' (its hook needs
    every row's token states from one pass): the same loss and gradients as without buckets."""

    def run(buckets: int):
        torch.manual_seed(0)  # same fresh MLM head
        enc = encoder(quiet_bert)
        enc.length_buckets = buckets
        obj = build_objective("declutr", enc, mlm_probability=0.3).double()
        batch = span_batch(documents, enc.tokenizer, size=6, index=1)
        calls: list[int] = []
        handle = enc.model.register_forward_hook(lambda *_: calls.append(1))
        record = obj(enc, batch)
        handle.remove()
        record["loss"].backward()
        named = [*enc.named_parameters(), *obj.named_parameters()]
        return record, {n: p.grad for n, p in named if p.grad is not None}, len(calls)

    plain, plain_grads, plain_calls = run(1)
    split, grads, split_calls = run(3)
    assert plain_calls == 2 and split_calls > 2  # the positives did run in several passes
    for k in plain:
        assert split[k].item() == pytest.approx(plain[k].item(), rel=1e-10), k
    assert plain["mlm"].item() > 0 and grads.keys() == plain_grads.keys()
    for name, g in plain_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-8, atol=1e-12, msg=name)


# -- two gloo processes ----------------------------------------------------------------------


def run_objective(tiny_dir: str, batch: SpanBatch, rows: slice, mini_batch: int | None):
    """The objective's loss record and gradients on the documents `rows` of the global batch
    (the offset the loop's local slice sets), averaged over processes as DDP does."""
    torch.manual_seed(0)
    enc = encoder(Path(tiny_dir))
    obj = build_objective("declutr", enc, mlm_probability=0.3).double()
    local = batch.slice(rows.start, rows.stop)
    if mini_batch is None:
        record = obj(enc, local)
        record["loss"].backward()
    else:
        record = gradcache_step(enc, obj, local, mini_batch)
    D.average_gradients([*enc.parameters(), *obj.parameters()])
    named = [*enc.named_parameters(), *obj.named_parameters()]
    grads = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}
    return {k: v.detach() for k, v in record.items()}, grads


def _worker(rank: int, world: int, tiny_dir: str, batch: SpanBatch, out_dir: str) -> None:
    with gloo_group(rank, world, out_dir):
        half = len(batch) // world
        rows = slice(rank * half, (rank + 1) * half)
        results = {}
        for mini in (None, 3):
            parts, grads = run_objective(tiny_dir, batch, rows, mini)
            for v in parts.values():  # the loop logs the mean over processes
                dist.all_reduce(v)
                v /= world
            results[mini] = (parts, grads)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def test_two_processes_equal_one_process(quiet_bert, documents, tmp_path):
    """2 gloo processes with 2 documents each (plain and under the gradient cache) == one
    process with all 4: anchors and mean positives gathered with gradient, masks keyed per global
    document, the MLM loss normalised by the global masked count. No 1/N gradient scaling (the
    reference's is shown in test_nt_xent.py)."""
    from transformers import AutoTokenizer

    batch = span_batch(documents, AutoTokenizer.from_pretrained(str(quiet_bert)), index=1)
    mp.spawn(_worker, args=(2, str(quiet_bert), batch, str(tmp_path)), nprocs=2, join=True)
    ref_parts, ref_grads = run_objective(str(quiet_bert), batch, slice(0, 4), None)
    assert ref_parts["mlm"].item() > 0
    for r in range(2):
        for mini, (parts, grads) in torch.load(tmp_path / f"rank{r}.pt").items():
            for k in ("loss", "contrastive", "mlm"):
                assert parts[k].item() == pytest.approx(ref_parts[k].item(), rel=1e-9), (mini, k)
            assert grads.keys() == ref_grads.keys()
            for key, g in ref_grads.items():
                torch.testing.assert_close(grads[key], g, atol=1e-12, rtol=1e-8, msg=key)


# -- checks ----------------------------------------------------------------------------------


def test_spans_longer_than_the_encoder_are_refused(quiet_bert, documents):
    enc = Encoder.from_pretrained(str(quiet_bert), pooling="mean", max_seq_length=16, device="cpu")
    batch = span_batch(documents, enc.tokenizer)
    with pytest.raises(
        UserError,
        match=r"max_span_len \(16\) plus 2 special tokens exceeds the "
        "encoder's max_seq_length 16; use max_span_len <= 14",
    ):
        build_objective("declutr", enc).views(batch)


def test_options_and_data_kind_are_checked(tiny_bert_dir):
    with pytest.raises(UserError, match="temperature must be > 0"):
        objective_config("declutr", {"temperature": 0})
    with pytest.raises(UserError, match="mlm_pass='both' is not 'anchors' | 'separate'"):
        objective_config("declutr", {"mlm_pass": "both"})
    with pytest.raises(
        UserError, match=r"unknown option 'mlm_prob' \(did you mean mlm_probability"
    ):
        objective_config("declutr", {"mlm_prob": 0.2})
    cfg = TrainConfig(
        model=ModelConfig(str(tiny_bert_dir)),
        objective={"name": "declutr"},
        data=DataSpec(kind="text", path="x.txt"),
    )
    with pytest.raises(
        UserError, match="consumes SpanBatch.*yields SentenceBatch.*use data.kind documents"
    ):
        check_objective_and_data(cfg)


# -- training runs ---------------------------------------------------------------------------


def _config(model: Path, docs: Path, out: Path, **train_opts) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(str(model), pooling="mean"),
        objective={"name": "declutr", "mlm_probability": 0.3},
        data=DataSpec(kind="documents", path=str(docs), options=SPANS),
        train=OptimConfig(batch_size=4, max_steps=STEPS, lr=3e-4, warmup_steps=2, **train_opts),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=3, keep_last=2),
        logging=LoggingConfig(log_every=1, tensorboard=False, progress_bar=False),
        output_dir=str(out),
    )


@pytest.mark.parametrize("opts", [{}, {"mini_batch_size": 5}], ids=["plain", "gradcache"])
def test_resume_is_exact(tmp_path, tiny_bert_dir, documents, opts):
    """Dropout on, MLM from the masked-anchor pass: killed after step 4 and resumed from the
    step-3 checkpoint in a new train() call, the run ends bitwise equal to a straight one (the
    stream re-creates the same span batches; masks are keyed; dropout states restored)."""
    train(_config(tiny_bert_dir, documents, tmp_path / "straight", **opts))
    cfg = _config(tiny_bert_dir, documents, tmp_path / "resumed", **opts)
    with pytest.raises(Killed):
        train(cfg, callbacks=[_kill_after(4)])
    assert [p.name for p in ckpt.list_checkpoints(cfg.output_dir)] == ["step-00000003"]
    assert train(dataclasses.replace(cfg, resume_from="latest")).steps == STEPS
    _assert_bitwise(_state(tmp_path / "straight"), _state(tmp_path / "resumed"))
    assert _train_steps(tmp_path / "resumed") == list(range(1, STEPS + 1))
    records = [
        json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    last = [r for r in records if r["kind"] == "train"][-1]
    short = build_stream(cfg.data, 4, 42, Encoder.from_pretrained(str(tiny_bert_dir)).tokenizer)
    assert (
        last["short_documents"] == short.corpus.short_documents >= 1
        and last["mlm"] > 0
        and last["contrastive"] > 0
    )


@pytest.fixture(scope="module")
def split_corpus(tmp_path_factory, shared_data):
    """WikiText-2 test in 120-word windows; every third article held out (572 windows)."""
    wiki = shared_data / "corpus" / "wikitext-2-raw-test.txt"
    docs = list(read_documents(wiki, "wikitext", window_words=120))
    held_titles = set(sorted({d.title for d in docs if d.title})[::3])
    root = tmp_path_factory.mktemp("split")
    (root / "train.txt").write_text(
        "\n".join(d.text for d in docs if d.title not in held_titles) + "\n"
    )
    return root / "train.txt", [d.text for d in docs if d.title in held_titles]


def span_retrieval(model_dir: Path, held: list[str]) -> float:
    """Top-1 accuracy of finding each held-out document's positive span (keyed draws: the same
    spans for every model) from its anchor among the positives of all held-out documents."""
    from contrasent.core.rng import keyed_rng
    from contrasent.data.spans import SpanConfig, SpanSampler

    enc = Encoder.from_pretrained(str(model_dir), pooling="mean", device="cpu")
    sampler = SpanSampler(SpanConfig(1, 1, 8, 32), enc.tokenizer, 128)
    anchors, positives = [], []
    for k, text in enumerate(held):
        doc = sampler.prepare(text)
        if doc is not None:
            a, p, _ = sampler.sample(doc, keyed_rng(0, 99, k))
            anchors.append(a[0])
            positives.append(p[0][0])
    a = torch.nn.functional.normalize(torch.tensor(enc.encode(anchors, batch_size=64)), dim=-1)
    p = torch.nn.functional.normalize(torch.tensor(enc.encode(positives, batch_size=64)), dim=-1)
    return ((a @ p.T).argmax(1) == torch.arange(len(a))).float().mean().item()


def test_learning_signal_held_out_span_retrieval(tmp_path, minilm_dir, split_corpus):
    """30 steps of DeCLUTR (MLM on, batch 8 documents) on a random tiny BERT make it find a
    held-out document's positive span among 567 others' far more often. Measured (top-1, before
    -> after): seed 0 0.189 -> 0.379, seed 1 0.242 -> 0.325, seed 2 0.240 -> 0.353 (mean gain
    +0.129); with positives misaligned by one anchor (a broken pairing): +0.08, -0.01, -0.01."""
    train_docs, held = split_corpus
    gains = []
    for seed in range(3):
        tiny = build_tiny_bert(tmp_path / f"tiny{seed}", minilm_dir, seed=seed)
        before = span_retrieval(tiny, held)
        cfg = TrainConfig(
            model=ModelConfig(str(tiny), pooling="mean"),
            objective={"name": "declutr"},
            data=DataSpec(
                kind="documents",
                path=str(train_docs),
                options={"min_span_len": 8, "max_span_len": 32},
            ),
            train=OptimConfig(batch_size=8, max_steps=30, lr=1e-3, seed=seed),
            eval=EvalConfig(every_steps=0, at_end=False),
            checkpoint=CheckpointConfig(every_steps=0),
            logging=LoggingConfig(log_every=10, tensorboard=False, progress_bar=False),
            output_dir=str(tmp_path / f"run{seed}"),
        )
        after = span_retrieval(train(cfg).final_dir, held)
        gains.append(after - before)
    assert min(gains) > 0.03 and sum(gains) / len(gains) > 0.06, gains


def test_paper_recipes_have_the_reference_numbers():
    from contrasent.cli.main import parse_train_config

    repo = Path(__file__).resolve().parents[1]
    for name, model in (("small", "distilroberta-base"), ("base", "roberta-base")):
        cfg = parse_train_config([str(repo / f"configs/declutr-{name}.yaml")])
        assert cfg.model.name_or_path == model and cfg.model.pooling == "mean"
        t, o, d = cfg.train, cfg.objective, cfg.data
        # the reference as it ran: slanted_triangular stuck at lr / 32, huggingface_adamw
        assert (t.batch_size, t.lr, t.weight_decay, t.grad_clip) == (4, 5e-5 / 32, 0.1, 1.0)
        assert (t.lr_schedule, t.warmup_ratio, t.warmup_steps) == ("constant", 0.0, 0)
        assert (t.adam_eps, t.adam_bias_correction) == (1e-6, False)
        assert not cfg.eval.keep_best  # the reference (no validation data) reports the last model
        slanted = parse_train_config([str(repo / f"configs/declutr-{name}-slanted.yaml")]).train
        assert (slanted.lr, slanted.lr_schedule, slanted.cut_frac, slanted.ratio) == (
            5e-5,
            "slanted_triangular",
            0.1,
            32,
        )
        linear = parse_train_config([str(repo / f"configs/declutr-{name}-linear.yaml")]).train
        assert (linear.lr, linear.lr_schedule, linear.warmup_ratio) == (5e-5, "linear", 0.1)
        for variant in (slanted, linear):  # otherwise the paper recipe's settings
            same = dataclasses.replace(variant, lr=t.lr, lr_schedule=t.lr_schedule)
            same = dataclasses.replace(same, warmup_ratio=0.0, cut_frac=0.1, ratio=32.0)
            assert same == t
        assert (t.mixed_precision, d.epochs, t.max_steps, d.drop_last) == ("fp16", 1, 0, True)
        assert (o["name"], o["temperature"], o["mlm"], o["mlm_weight"]) == (
            "declutr",
            0.05,
            True,
            1.0,
        )
        spans = {
            k: d.options[k]
            for k in ("num_anchors", "num_positives", "min_span_len", "max_span_len")
        }
        assert spans == {
            "num_anchors": 2,
            "num_positives": 2,
            "min_span_len": 32,
            "max_span_len": 510,
        }
