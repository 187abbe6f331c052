"""objective.matryoshka: equal to sentence-transformers' MatryoshkaLoss around the same base loss
(plain and around CachedMNRL vs our gradient cache), two gloo processes == one, the recorded
dims, ``--dim`` truncation and its mistakes, and a short training run with a learning signal."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import gloo_group
from contrasent.core.errors import UserError
from contrasent.data.batches import PairBatch, SentenceBatch
from contrasent.model.dims import check_dim, parse_dims, truncate
from contrasent.model.encoder import Encoder
from contrasent.objectives import build_objective, objective_config
from contrasent.train.gradcache import gradcache_step

ANCHORS = ["how do I bake bread", "what is a cat", "where is paris", "is tea healthy",
           "who wrote hamlet", "best way to learn piano", "why is the sky blue", "a red car"]  # fmt: skip
POSITIVES = ["bake bread at home", "cats are small pets", "paris is in france",
             "green tea is healthy", "shakespeare wrote it", "practice scales daily",
             "rayleigh scattering", "the car is red"]  # fmt: skip
NEGATIVES = ["the stock market", "a small dog", "london is big", "coffee is bitter",
             "macbeth", "play the guitar", "the grass is green", "a blue bike"]  # fmt: skip
DIMS = [32, 16, 8]
WEIGHTS = [1.0, 0.5, 2.0]


def _theirs(st_dir, cached: bool):
    """MatryoshkaLoss(MNRL or CachedMNRL) loss and encoder gradients on the triplets."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    st = SentenceTransformer(str(st_dir), device="cpu")
    st.train()
    base = (
        losses.CachedMultipleNegativesRankingLoss(st, scale=20.0, mini_batch_size=3)
        if cached
        else losses.MultipleNegativesRankingLoss(st, scale=20.0)
    )
    loss_fn = losses.MatryoshkaLoss(st, base, DIMS, WEIGHTS)
    features = [st.tokenize(t) for t in (ANCHORS, POSITIVES, NEGATIVES)]
    st.zero_grad()
    loss = loss_fn(features, None)
    loss.backward()
    grads = {n: p.grad for n, p in st[0].auto_model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def _ours(st_dir, mini_batch: int | None):
    enc = Encoder.from_pretrained(st_dir, device="cpu").train()
    objective = build_objective(
        "pairs", enc, dedup="none", matryoshka={"dims": DIMS, "weights": WEIGHTS}
    )
    batch = PairBatch(ANCHORS, POSITIVES, [NEGATIVES])
    if mini_batch is None:
        record = objective(enc, batch)
        record["loss"].backward()
    else:
        record = gradcache_step(enc, objective, batch, mini_batch)
    grads = {n: p.grad for n, p in enc.model.named_parameters() if p.grad is not None}
    return record, grads


@pytest.mark.parametrize("cached", [False, True], ids=["plain", "gradient-cache"])
def test_equals_matryoshka_loss(st_dir, cached):
    """pairs + matryoshka == MatryoshkaLoss(MNRL) (plain) / MatryoshkaLoss(CachedMNRL) (under
    our gradient cache, 3 texts a pass): loss and every encoder gradient."""
    theirs, g_theirs = _theirs(st_dir, cached)
    record, g_ours = _ours(st_dir, 3 if cached else None)
    assert record["loss"].item() == pytest.approx(theirs, rel=1e-5)
    assert {f"contrastive@{d}" for d in DIMS} <= record.keys()
    # the total is the weighted sum of the per-dimension parts it logs
    total = sum(w * float(record[f"contrastive@{d}"]) for d, w in zip(DIMS, WEIGHTS, strict=True))
    assert record["loss"].item() == pytest.approx(total, rel=1e-6)
    assert g_ours.keys() == g_theirs.keys()
    for name, g in g_theirs.items():
        # float32 sums of ~1e3 terms: ST's own MNRL and CachedMNRL differ by ~2e-6 x max|g|
        atol = 3e-6 * max(1.0, g.abs().max().item())
        torch.testing.assert_close(g_ours[name], g, atol=atol, rtol=1e-4, msg=name)


def _run(tiny_dir: str, rows: slice, mini_batch: int | None):
    torch.manual_seed(0)
    enc = Encoder.from_pretrained(tiny_dir, pooling="mean", device="cpu").double().eval()
    obj = build_objective("simcse_unsup", enc, mlp=False, matryoshka={"dims": [32, 8]})
    batch = SentenceBatch(ANCHORS + POSITIVES, index=3).slice(rows.start, rows.stop)
    if mini_batch is None:
        record = obj(enc, batch)
        record["loss"].backward()
    else:
        record = gradcache_step(enc, obj, batch, mini_batch)
    from contrasent.core import distributed as D

    D.average_gradients(list(enc.parameters()))
    grads = {n: p.grad.detach().clone() for n, p in enc.named_parameters() if p.grad is not None}
    return float(torch.as_tensor(record["loss"]).detach()), grads


def _worker(rank: int, world: int, tiny_dir: str, out_dir: str) -> None:
    import torch.distributed as dist

    with gloo_group(rank, world, out_dir):
        loss, grads = _run(tiny_dir, slice(rank * 8, rank * 8 + 8), 3)
        t = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce(t)
        torch.save((t.item() / world, grads), Path(out_dir) / f"m{rank}.pt")


def test_two_processes_under_cache_equal_one_process(tiny_bert_dir, tmp_path):
    """SimCSE + matryoshka, gradient cache on 2 gloo processes == the plain step on one."""
    mp.spawn(_worker, args=(2, str(tiny_bert_dir), str(tmp_path)), nprocs=2)
    ref_loss, ref_grads = _run(str(tiny_bert_dir), slice(0, 16), None)
    for r in range(2):
        loss, grads = torch.load(tmp_path / f"m{r}.pt")
        assert loss == pytest.approx(ref_loss, rel=1e-10)
        for key, g in ref_grads.items():
            torch.testing.assert_close(grads[key], g, atol=1e-12, rtol=1e-8, msg=key)


def test_mistakes_are_one_line(tiny_bert_dir):
    with pytest.raises(UserError, match="full embedding width"):
        objective_config("nli_softmax", {"matryoshka": {"dims": [8]}})
    with pytest.raises(UserError, match="weights has 1 entries for 2 dims"):
        objective_config("pairs", {"matryoshka": {"dims": [8, 4], "weights": [1]}})
    with pytest.raises(UserError, match="unknown option 'dim'"):
        objective_config("pairs", {"matryoshka": {"dim": [8]}})
    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu")
    with pytest.raises(UserError, match="64 is larger than the model's embedding dimension 32"):
        build_objective("pairs", enc, matryoshka={"dims": [64, 8]})
    with pytest.raises(UserError, match="set objective.mlp false"):
        build_objective("simcse_unsup", enc, matryoshka={"dims": [32, 8]})


def test_dims_per_step_is_keyed_by_the_step(tiny_bert_dir):
    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu")
    obj = build_objective("pairs", enc, matryoshka={"dims": [32, 16, 8, 4], "dims_per_step": 2})
    picks = [obj.step_dims(PairBatch(ANCHORS, POSITIVES, [], index=i)) for i in range(8)]
    assert all(len(p) == 2 for p in picks)
    assert picks == [obj.step_dims(PairBatch(ANCHORS, POSITIVES, [], index=i)) for i in range(8)]
    assert len({tuple(p) for p in picks}) > 1


def test_truncate_and_check_dim(caplog):
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    t = truncate(x, 4)
    np.testing.assert_allclose(t, x[:, :4] / np.linalg.norm(x[:, :4], axis=1, keepdims=True))
    torch.testing.assert_close(truncate(torch.from_numpy(x), 4), torch.from_numpy(t))
    with pytest.raises(UserError, match="--dim 13: larger than the model's embedding dimension 12"):
        check_dim(13, 12, [12, 6])
    with caplog.at_level(logging.WARNING):
        assert check_dim(5, 12, [12, 6]) == 5
    assert "trained with Matryoshka dims 12, 6" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_dim(6, 12, [12, 6])
        check_dim(12, 12, None)
    assert not caplog.text
    assert parse_dims("64, 128") == [64, 128]
    with pytest.raises(UserError, match="'x' is not a positive"):
        parse_dims("64,x")


def test_training_records_dims_and_sentence_transformers_truncates(tmp_path, tiny_bert_dir):
    """A few pairs + matryoshka steps: the loss falls at every dim, the saved model records its
    dims, and ``SentenceTransformer(dir, truncate_dim=8)`` gives our ``truncate(.., 8)``."""
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu").train()
    obj = build_objective("pairs", enc, matryoshka={"dims": [32, 8]})
    opt = torch.optim.AdamW(enc.parameters(), lr=3e-3)
    batch = PairBatch(ANCHORS, POSITIVES, [])
    first = last = None
    for _ in range(12):
        record = obj(enc, batch)
        opt.zero_grad()
        record["loss"].backward()
        opt.step()
        first = first or {k: float(v) for k, v in record.items()}
        last = {k: float(v) for k, v in record.items()}
    for d in (32, 8):
        assert last[f"contrastive@{d}"] < 0.5 * first[f"contrastive@{d}"]
    enc.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "contrasent_config.json").read_text())
    assert meta["matryoshka_dims"] == [32, 8]
    assert Encoder.from_pretrained(tmp_path / "m", device="cpu").matryoshka_dims == [32, 8]
    ours = truncate(enc.encode(ANCHORS), 8)
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu", truncate_dim=8)
    theirs = st.encode(ANCHORS, normalize_embeddings=True)
    assert theirs.shape == (len(ANCHORS), 8)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.fixture(scope="module")
def matryoshka_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT saved as if trained with matryoshka dims [32, 8]."""
    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu")
    build_objective("pairs", enc, matryoshka={"dims": [32, 8]})  # setup records the dims
    out = tmp_path_factory.mktemp("mrl") / "m"
    enc.save(out)
    return out


def test_cli_dim_embed_index_search_export(tmp_path, matryoshka_dir, caplog):
    """embed / index build / search / export --dim: truncated, re-normalised rows equal to
    ``truncate`` of the full ones; a dim the model was not trained for warns, naming 32, 8;
    the exported folder embeds at 8 in sentence-transformers without truncate_dim."""
    from sentence_transformers import SentenceTransformer

    from contrasent.cli.main import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(POSITIVES) + "\n")
    model = ["--model", str(matryoshka_dir)]
    assert main(["embed", *model, "--input", str(corpus), "--output", str(tmp_path / "f.npy")]) in (
        0,
        None,
    )
    with caplog.at_level(logging.WARNING):
        main(["embed", *model, "--dim", "16", "--input", str(corpus), "--output", str(tmp_path / "e.npy")])  # fmt: skip
    assert "--dim 16: the model was trained with Matryoshka dims 32, 8" in caplog.text
    full, cut = np.load(tmp_path / "f.npy"), np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(cut, truncate(full, 16), atol=1e-5)
    main(["index", "build", *model, "--dim", "8", "--input", str(corpus), "--output", str(tmp_path / "idx")])  # fmt: skip
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["dim"] == 8 and meta["model"]["dim"] == 8
    hits = tmp_path / "hits.jsonl"
    main(["search", "--index", str(tmp_path / "idx"), "--output", str(hits), "--top_k", "1", *POSITIVES[:3]])  # fmt: skip
    got = [json.loads(line)["hits"][0]["id"] for line in hits.read_text().splitlines()]
    assert got == [0, 1, 2]  # each text finds itself at 8 dims: queries were cut to 8 too
    enc = Encoder.from_pretrained(matryoshka_dir, device="cpu")
    from contrasent.model.dims import apply_dim

    apply_dim(enc, 8).save(tmp_path / "m8")
    st = SentenceTransformer(str(tmp_path / "m8"), device="cpu")
    np.testing.assert_allclose(st.encode(POSITIVES), truncate(full, 8), atol=1e-5)


def test_cli_eval_dims(tmp_path, matryoshka_dir, senteval_dir):
    """eval --dims 8: results under dims.8 equal evaluating the truncated embeddings."""
    from contrasent.cli.main import main
    from contrasent.eval.sts import evaluate_sts

    out = tmp_path / "r.json"
    main(["eval", "--model", str(matryoshka_dir), "--tasks", "stsb", "--mode", "dev",
          "--dims", "8", "--output", str(out)])  # fmt: skip
    res = json.loads(out.read_text())
    enc = Encoder.from_pretrained(matryoshka_dir, device="cpu")
    want = evaluate_sts(lambda t: truncate(enc.encode(t), 8), mode="dev", tasks="stsb")
    assert res["dims"]["8"]["avg"] == pytest.approx(want["avg"], abs=1e-6)
    assert res["dims"]["8"]["avg"] != pytest.approx(res["avg"], abs=1e-3)


def test_training_loop_records_each_dim(tmp_path, tiny_bert_dir, shared_data, senteval_dir):
    """The real loop with pairs + matryoshka [32, 8]: per-dim loss parts in the train records,
    stsb@8 / avg@8 in the eval record (equal to evaluating the saved model truncated), and the
    saved final/ model records its dims."""
    from contrasent.data.registry import DataSpec
    from contrasent.eval.sts import evaluate_sts
    from contrasent.train.config import (
        CheckpointConfig,
        EvalConfig,
        LoggingConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
    )
    from contrasent.train.loop import train

    cfg = TrainConfig(
        model=ModelConfig(str(tiny_bert_dir), pooling="mean", max_seq_length=32),
        objective={"name": "pairs", "matryoshka": {"dims": [32, 8]}},
        data=DataSpec(kind="pairs", path=str(shared_data / "pairs" / "wiki-split-tune.tsv")),
        train=OptimConfig(batch_size=8, max_steps=3, lr=1e-3),
        eval=EvalConfig(every_steps=0, at_end=True, mode="dev", data_dir=str(senteval_dir)),
        checkpoint=CheckpointConfig(every_steps=0),
        logging=LoggingConfig(log_every=1, tensorboard=False, progress_bar=False),
        output_dir=str(tmp_path / "run"),
    )
    train(cfg)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert all("contrastive@32" in r and "contrastive@8" in r for r in steps)
    (last,) = [r for r in records if r["kind"] == "eval"]
    final = tmp_path / "run" / "final"
    enc = Encoder.from_pretrained(final, device="cpu")
    assert enc.matryoshka_dims == [32, 8]
    want = evaluate_sts(lambda t: truncate(enc.encode(t), 8), senteval_dir, "dev")
    assert last["avg@8"] == pytest.approx(want["avg"], abs=1e-6)
    assert last["stsb@8"] is not None and "avg@32" not in last


def test_model_card_names_matryoshka_and_cites_it():
    from contrasent.train.card import run_card_info, with_objective

    recipe = {"model": {"name_or_path": "m"},
              "objective": {"name": "pairs", "matryoshka": {"dims": [384, 64]}}}  # fmt: skip
    info = with_objective(run_card_info(recipe, steps=1, time_s=1.0))
    assert info["method"].endswith("+ Matryoshka representation learning (dims [384, 64])")
    assert "kusupati2022matryoshka" in info["citation"] and "matryoshka" in info["tags"]
