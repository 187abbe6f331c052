"""The scored-pair objectives against sentence-transformers' losses on the same embeddings (loss
and gradients), under the gradient cache, on two gloo processes; the ``scored_pairs`` data kind
(normalisation, one-line errors); a learning signal on STS-B.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import gloo_group
from contrasent.core.errors import UserError
from contrasent.data.batches import ScoredPairBatch
from contrasent.objectives import build_objective

S1 = ["a man is playing a guitar", "a woman slices an onion", "the cat sleeps", "kids play",
      "a dog runs in the park", "he drove to work", "it is sunny", "the market fell"]  # fmt: skip
S2 = ["a man plays the guitar", "someone cuts a vegetable", "a cat is asleep", "a car is red",
      "a puppy runs on grass", "she walked to the store", "the weather is nice", "stocks rose"]  # fmt: skip
SCORES = [1.0, 0.6, 0.9, 0.0, 0.7, 0.2, 0.8, 0.2]  # a tie (rows 5 and 7)
FLAGS = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]

# our objective name, its options, sentence-transformers' class, its kwargs, the labels
CASES = {
    "cosent": ("cosent", {}, "CoSENTLoss", {"scale": 20.0}, SCORES),
    "cosent_scale": ("cosent", {"scale": 7.0}, "CoSENTLoss", {"scale": 7.0}, SCORES),
    "angle": ("angle", {}, "AnglELoss", {"scale": 20.0}, SCORES),
    "cosine_mse": ("cosine_mse", {}, "CosineSimilarityLoss", {}, SCORES),
    "contrastive": ("contrastive", {}, "ContrastiveLoss", {"margin": 0.5}, FLAGS),
    "contrastive_soft": ("contrastive", {"margin": 0.8}, "ContrastiveLoss", {"margin": 0.8}, SCORES),
    "online_contrastive": ("online_contrastive", {}, "OnlineContrastiveLoss", {}, FLAGS),
}  # fmt: skip


def _st_loss(cls_name: str, **kwargs):
    from sentence_transformers.sentence_transformer import losses

    return getattr(losses, cls_name)(model=None, **kwargs)


def _embeddings(n: int = 8, h: int = 15, seed: int = 0) -> list[torch.Tensor]:
    # h odd: AnglE's padding to an even dimension is exercised
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True) for _ in "uv"]


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradients_equal_sentence_transformers(case):
    import warnings

    ours_name, options, st_name, st_kwargs, labels = CASES[case]
    u, v = _embeddings(seed=len(case))
    objective = build_objective(ours_name, None, **options)
    batch = ScoredPairBatch(S1, S2, labels)
    parts = objective.loss({"sentence1": u, "sentence2": v}, batch)
    ours = sum(p.weight * p.value for p in parts.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ContrastiveLoss warns about the soft labels
        theirs = _st_loss(st_name, **st_kwargs).compute_loss_from_embeddings(
            [u, v], torch.tensor(labels, dtype=torch.float64)
        )
    # sentence-transformers casts the angle similarity and the MSE / contrastive labels to
    # float32 (0.6 is then 0.6 + 2e-8); CoSENT and 0/1 labels stay exact in float64
    inexact = ours_name == "angle" or (labels is SCORES and ours_name != "cosent")
    tol = 1e-6 if inexact else 1e-10
    assert ours.item() == pytest.approx(theirs.item(), rel=tol)
    assert ours.item() > 0
    for a, b in zip(torch.autograd.grad(ours, [u, v]), torch.autograd.grad(theirs, [u, v]), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, atol=tol * 10, rtol=tol * 10)


def test_angle_terms_add_up():
    """The paper's sum: angle + CoSENT (equal to CoSENTLoss) + in-batch negatives: angle_emb's
    ``in_batch_negative_loss`` (checked equal to angle_emb 0.6.1, loss and gradients), here by
    hand: each of the 2N texts finds its partner among the other 2N - 1, zero for the texts of
    the pairs scored below the threshold, mean over 2N."""
    import math

    import torch.nn.functional as F

    u, v = _embeddings(seed=3)
    batch = ScoredPairBatch(S1, S2, SCORES)
    objective = build_objective("angle", None, cosent_weight=2.0, ibn_weight=0.5, ibn_threshold=0.7)
    parts = objective.loss({"sentence1": u, "sentence2": v}, batch)
    labels = torch.tensor(SCORES, dtype=torch.float64)
    cosent = _st_loss("CoSENTLoss").compute_loss_from_embeddings([u, v], labels)
    assert parts["cosent"].value.item() == pytest.approx(cosent.item(), rel=1e-10)
    assert parts["cosent"].weight == 2.0 and parts["ibn"].weight == 0.5
    texts = [t.detach() for pair in zip(u, v, strict=True) for t in pair]
    total = 0.0
    for i, t in enumerate(texts):
        if SCORES[i // 2] < 0.7:
            continue
        logits = [20.0 * F.cosine_similarity(t, o, dim=0).item() for o in texts]
        others = math.log(sum(math.exp(x) for j, x in enumerate(logits) if j != i))
        total += others - logits[i ^ 1]
    assert parts["ibn"].value.item() == pytest.approx(total / len(texts), rel=1e-10)


def test_online_contrastive_refuses_graded_scores():
    objective = build_objective("online_contrastive", None)
    u, v = _embeddings()
    with pytest.raises(UserError, match="needs 0/1 labels"):
        objective.loss({"sentence1": u, "sentence2": v}, ScoredPairBatch(S1, S2, SCORES))


@pytest.fixture(scope="module")
def tiny_double(tiny_bert_dir):
    return str(tiny_bert_dir)


def _run(tiny_dir: str, case: str, rows: slice, mini_batch: int | None = None):
    """Loss and encoder gradients of ``rows`` (plain step, or the gradient cache)."""
    from contrasent.model.encoder import Encoder
    from contrasent.train.gradcache import gradcache_step

    ours_name, options, _, _, labels = CASES[case]
    enc = Encoder.from_pretrained(tiny_dir, pooling="mean", device="cpu").double().eval()
    objective = build_objective(ours_name, enc, **options)
    batch = ScoredPairBatch(S1[rows], S2[rows], labels[rows], offset=rows.start or 0)
    if mini_batch is None:
        out = objective(enc, batch)
        out["loss"].backward()
    else:
        out = gradcache_step(enc, objective, batch, mini_batch)
    grads = {n: p.grad.detach().clone() for n, p in enc.named_parameters() if p.grad is not None}
    return float(out["loss"].detach()), grads


@pytest.mark.parametrize("case", ["cosent", "angle", "cosine_mse", "online_contrastive"])
def test_gradient_cache_equals_plain_step(tiny_bert_dir, case):
    ref_loss, ref = _run(str(tiny_bert_dir), case, slice(0, 8))
    loss, grads = _run(str(tiny_bert_dir), case, slice(0, 8), mini_batch=3)
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    for key, g in ref.items():
        torch.testing.assert_close(grads[key], g, atol=1e-12, rtol=1e-8, msg=key)


def _worker(rank: int, world: int, tiny_dir: str, out_dir: str) -> None:
    with gloo_group(rank, world, out_dir):
        results = {}
        half = len(S1) // world
        for case in ("cosent", "angle", "cosine_mse", "contrastive", "online_contrastive"):
            loss, grads = _run(tiny_dir, case, slice(rank * half, (rank + 1) * half))
            loss_t = torch.tensor([loss], dtype=torch.float64)
            dist.all_reduce(loss_t)
            for g in grads.values():  # DDP: the average over processes
                dist.all_reduce(g)
                g /= world
            results[case] = (loss_t.item() / world, grads)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def test_two_processes_equal_one_process(tiny_bert_dir, tmp_path):
    mp.spawn(_worker, args=(2, str(tiny_bert_dir), str(tmp_path)), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for case, (loss, grads) in per_rank[0].items():
        ref_loss, ref = _run(str(tiny_bert_dir), case, slice(0, 8))
        assert loss == pytest.approx(ref_loss, rel=1e-10), case
        assert per_rank[1][case][0] == pytest.approx(ref_loss, rel=1e-10), case
        for key, g in ref.items():
            torch.testing.assert_close(grads[key], g, atol=1e-12, rtol=1e-8, msg=f"{case} {key}")


# ----------------------------------------------------------------------------- the data kind
def _stream(tmp_path, text: str, name: str = "p.tsv", **spec):
    from contrasent.data.registry import DataSpec, build_stream

    path = tmp_path / name
    path.write_text(text)
    options = spec.pop("options", {"score_min": 0, "score_max": 5})
    data = DataSpec(kind="scored_pairs", path=str(path), options=options, shuffle_buffer=0, **spec)
    return build_stream(data, 2, 0, None)


def test_scores_are_normalised_from_the_declared_range(tmp_path):
    stream = _stream(
        tmp_path,
        "s1\ts2\tscore\na\tb\t5\nc\td\t2.5\n\te\t1\nf\tg\t0\n",
        columns={"sentence1": "s1", "sentence2": "s2", "score": "score"},
    )
    first = next(iter(stream))
    assert first.sentences1 == ["a", "c"] and first.scores == [1.0, 0.5]
    assert stream.steps_per_epoch == 1  # 3 rows (the empty sentence skipped), batches of 2


def test_jsonl_numbers_and_stsb_layout(tmp_path, senteval_dir):
    stream = _stream(
        tmp_path,
        '{"q": "a", "d": "b", "y": 4}\n{"q": "c", "d": "d", "y": 1.5}\n',
        name="p.jsonl",
        columns={"sentence1": "q", "sentence2": "d", "score": "y"},
    )
    assert next(iter(stream)).scores == [0.8, 0.3]
    from contrasent.data.registry import DataSpec, build_stream

    stsb = DataSpec(
        kind="scored_pairs", path=str(senteval_dir / "STS/STSBenchmark/sts-train.csv"),
        format="tsv", columns={"sentence1": 5, "sentence2": 6, "score": 4},
        options={"score_min": 0, "score_max": 5, "trailing_columns": True},
    )  # fmt: skip
    assert build_stream(stsb, 16, 0, None).steps_per_epoch == 5749 // 16


@pytest.mark.parametrize(
    "row, message",
    [("a\tb\t7", "p.tsv:2: score 7 is outside the declared range [0, 5]"),
     ("a\tb\thigh", "p.tsv:2: score 'high' is not a number"),
     ("a\tb\tnan", "p.tsv:2: score 'nan' is not a number")],
)  # fmt: skip
def test_bad_scores_are_one_line_at_file_and_line(tmp_path, row, message):
    with pytest.raises(UserError) as err:
        _stream(tmp_path, f"x\ty\t1\n{row}\n")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_scores_skipped_and_counted(tmp_path):
    stream = _stream(tmp_path, "x\ty\t1\na\tb\t9\nc\td\t2\n", on_error="skip")
    assert stream.steps_per_epoch == 1  # two good rows, one skipped


def test_bad_columns_and_range(tmp_path):
    with pytest.raises(UserError, match="missing: \\['score'\\]"):
        _stream(tmp_path, "x\ty\t1\n", columns={"sentence1": 0, "sentence2": 1})
    with pytest.raises(UserError, match="score_max"):
        _stream(tmp_path, "x\ty\t1\n", options={"score_min": 1, "score_max": 1})


# ----------------------------------------------------------------------------- learning signal
def _stsb_dev(model_dir, senteval_dir) -> float:
    from contrasent.eval.sts import evaluate_sts
    from contrasent.model.encoder import Encoder

    enc = Encoder.from_pretrained(model_dir, device="cpu")
    res = evaluate_sts(lambda t: enc.encode(t, batch_size=256), senteval_dir, "dev", "STSBenchmark")
    return res["tasks"]["STSBenchmark"]["spearman"]["dev"]


@pytest.mark.parametrize(
    "objective", ["cosent", pytest.param("cosine_mse", marks=pytest.mark.slow)]
)
def test_stsb_train_pairs_raise_stsb_dev(tmp_path, tiny_bert_dir, senteval_dir, objective):
    """The tiny random BERT trained on STS-B train scored pairs (0-5 declared, normalised) must
    correlate better with STS-B dev, which it never saw.

    Measured (40 steps of 32 pairs, lr 1e-3, seed 42): Spearman x 100 48.05 -> 52.28 (cosent),
    -> 52.40 (cosine_mse). Asserted: +2 points."""
    from contrasent.data.registry import DataSpec
    from contrasent.train.config import (
        CheckpointConfig,
        EvalConfig,
        LoggingConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
    )  # fmt: skip
    from contrasent.train.loop import train

    data = DataSpec(
        kind="scored_pairs", path=str(senteval_dir / "STS/STSBenchmark/sts-train.csv"),
        format="tsv", columns={"sentence1": 5, "sentence2": 6, "score": 4},
        options={"score_min": 0, "score_max": 5, "trailing_columns": True}, epochs=None,
    )  # fmt: skip
    cfg = TrainConfig(
        model=ModelConfig(str(tiny_bert_dir), pooling="mean", max_seq_length=32),
        objective={"name": objective},
        data=data,
        train=OptimConfig(batch_size=32, max_steps=40, lr=1e-3),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=0),
        logging=LoggingConfig(log_every=10, tensorboard=False, progress_bar=False),
        output_dir=str(tmp_path),
    )
    before = _stsb_dev(tiny_bert_dir, senteval_dir)
    after = _stsb_dev(train(cfg).final_dir, senteval_dir)
    assert after - before >= 2.0, (before, after)
