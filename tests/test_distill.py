"""Distillation: distill_mse / distill_margin_mse equal to sentence-transformers' MSELoss /
MarginMSELoss, a student from the teacher's layers (model.keep_layers), the multilingual recipe
on a tiny synthetic parallel set, and a few training steps with a real learning signal."""

from __future__ import annotations

import pytest
import torch

from contrasent.core.errors import UserError
from contrasent.data.batches import PairBatch, SentenceBatch
from contrasent.model.encoder import Encoder
from contrasent.model.prune import keep_layers
from contrasent.objectives import build_objective
from contrasent.objectives.distill import margin_mse, mse_distill

TEXTS = ["how do I bake bread", "what is a cat", "where is paris", "is tea healthy",
         "who wrote hamlet", "best way to learn piano", "why is the sky blue", "a red car"]  # fmt: skip


def _st(name, **kw):
    from sentence_transformers.sentence_transformer import losses

    return getattr(losses, name)(model=None, **kw) if name == "MarginMSELoss" else None


def test_mse_equals_sentence_transformers_mse_loss():
    from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss

    g = torch.Generator().manual_seed(0)
    s1, s2 = (
        torch.randn(6, 16, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)
    )
    t = torch.randn(6, 16, generator=g, dtype=torch.float64)
    ref = EmbedDistillLoss.__new__(EmbedDistillLoss)
    torch.nn.Module.__init__(ref)
    ref.projection, ref.distance_metric = None, "mse"
    theirs = ref.compute_loss_from_embeddings([s1, s2], [t, t])
    ours = mse_distill([s1, s2], [t, t])
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    for a, b in zip(
        torch.autograd.grad(ours, [s1, s2]), torch.autograd.grad(theirs, [s1, s2]), strict=True
    ):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("k", [1, 2])
def test_margin_mse_equals_sentence_transformers_margin_mse_loss(k):
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss

    g = torch.Generator().manual_seed(k)
    embs = [
        torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
        for _ in range(2 + k)
    ]
    margins = torch.randn(5, k, generator=g, dtype=torch.float64)
    ref = MarginMSELoss.__new__(MarginMSELoss)
    torch.nn.Module.__init__(ref)
    from sentence_transformers.util import pairwise_dot_score

    ref.similarity_fct, ref.loss_fct = pairwise_dot_score, torch.nn.MSELoss()
    theirs = ref.compute_loss_from_embeddings(embs, margins if k > 1 else margins[:, 0])
    ours = margin_mse(embs[0], embs[1], embs[2:], margins)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    for a, b in zip(
        torch.autograd.grad(ours, embs), torch.autograd.grad(theirs, embs), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_keep_layers_student_saves_and_loads_smaller(tmp_path, minilm_dir):
    from conftest import build_tiny_bert

    teacher = build_tiny_bert(tmp_path / "t", minilm_dir, num_hidden_layers=4)
    enc = Encoder.from_pretrained(teacher, device="cpu")
    full = Encoder.from_pretrained(teacher, device="cpu")
    keep_layers(enc.model, [0, 2])
    assert enc.model.config.num_hidden_layers == 2 and len(enc.model.encoder.layer) == 2
    torch.testing.assert_close(
        enc.model.encoder.layer[1].output.dense.weight,
        full.model.encoder.layer[2].output.dense.weight,
    )
    enc.save(tmp_path / "s")
    again = Encoder.from_pretrained(tmp_path / "s", device="cpu")
    assert again.model.config.num_hidden_layers == 2
    torch.testing.assert_close(
        torch.from_numpy(again.encode(TEXTS)), torch.from_numpy(enc.encode(TEXTS))
    )
    with pytest.raises(UserError, match=r"model.keep_layers \[0, 7\]: give distinct increasing"):
        keep_layers(Encoder.from_pretrained(teacher, device="cpu").model, [0, 7])


def _train(obj, enc, batch, steps=15, lr=3e-3):
    params = [*enc.parameters(), *obj.parameters()]
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        record = obj(enc, batch)
        opt.zero_grad()
        record["loss"].backward()
        opt.step()
        losses.append(record["loss"].item())
    return losses


def test_distill_mse_student_from_teacher_layers_learns(tmp_path, minilm_dir):
    """A 1-layer student from a 2-layer teacher: the MSE to the teacher falls; the teacher stays
    frozen and outside the objective's parameters."""
    from conftest import build_tiny_bert

    teacher = build_tiny_bert(tmp_path / "t", minilm_dir, num_hidden_layers=4,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    enc = Encoder.from_pretrained(teacher, device="cpu").train()
    keep_layers(enc.model, [0])
    obj = build_objective("distill_mse", enc, teacher=str(teacher))
    assert obj.projection is None and not list(obj.parameters())
    before = [p.clone() for p in obj._teacher[0].parameters()]
    losses = _train(obj, enc, SentenceBatch(TEXTS), steps=30, lr=2e-4)
    assert losses[-1] < 0.1 * losses[0]
    assert all(torch.equal(a, b) for a, b in zip(before, obj._teacher[0].parameters(), strict=True))


def test_multilingual_recipe_on_synthetic_parallel_data(tmp_path, minilm_dir):
    """Tiny parallel set (English, a "translation": the words reversed and upper-cased), student
    of another width (projection 16 -> 32): student(translation) moves toward teacher(English),
    and the data kind ``pairs`` feeds it."""
    from conftest import build_tiny_bert

    teacher = build_tiny_bert(tmp_path / "t", minilm_dir)
    student = build_tiny_bert(
        tmp_path / "s", minilm_dir, seed=1, hidden_size=16, intermediate_size=32
    )
    translations = [" ".join(reversed(t.split())).upper() for t in TEXTS]
    batch = PairBatch(TEXTS, translations, [])
    torch.manual_seed(0)
    enc = Encoder.from_pretrained(student, device="cpu").train()
    obj = build_objective("distill_mse", enc, teacher=str(teacher))
    assert obj.projection is not None and obj.projection.weight.shape == (32, 16)
    losses = _train(obj, enc, batch, steps=25)
    assert losses[-1] < 0.3 * losses[0]
    with pytest.raises(UserError, match="set objective.projection auto"):
        build_objective("distill_mse", enc, teacher=str(teacher), projection=False)


def test_margin_mse_learns_teacher_margins(tmp_path, minilm_dir):
    from conftest import build_tiny_bert

    teacher = build_tiny_bert(tmp_path / "t", minilm_dir, hidden_dropout_prob=0.0)
    student = build_tiny_bert(tmp_path / "s", minilm_dir, seed=3, hidden_dropout_prob=0.0)
    batch = PairBatch(TEXTS, TEXTS[1:] + TEXTS[:1], [TEXTS[2:] + TEXTS[:2]])
    torch.manual_seed(0)
    enc = Encoder.from_pretrained(student, device="cpu").train()
    obj = build_objective("distill_margin_mse", enc, teacher=str(teacher))
    losses = _train(obj, enc, batch, steps=20, lr=1e-3)
    assert losses[-1] < 0.5 * losses[0]


def test_training_loop_distills_into_kept_layers(tmp_path, minilm_dir, shared_data):
    """The real loop: model.keep_layers [0, 2] of a 4-layer teacher, distill_mse on wiki1m
    lines; the MSE to the teacher on other sentences falls and the saved student has 2 layers and loads in sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    from conftest import build_tiny_bert
    from contrasent.data.registry import DataSpec
    from contrasent.train.config import (
        CheckpointConfig,
        EvalConfig,
        LoggingConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
    )
    from contrasent.train.loop import train

    teacher = build_tiny_bert(tmp_path / "t", minilm_dir, num_hidden_layers=4,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    cfg = TrainConfig(
        model=ModelConfig(str(teacher), pooling="mean", max_seq_length=32, keep_layers=[0, 2]),
        objective={"name": "distill_mse", "teacher": str(teacher)},
        data=DataSpec(kind="text", path=str(shared_data / "corpus" / "wiki1m-head.txt")),
        train=OptimConfig(batch_size=16, max_steps=30, lr=3e-4),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=0),
        logging=LoggingConfig(log_every=1, tensorboard=False, progress_bar=False),
        output_dir=str(tmp_path / "run"),
    )
    target = Encoder.from_pretrained(teacher, device="cpu").encode(TEXTS)
    start = Encoder.from_pretrained(teacher, device="cpu")
    keep_layers(start.model, [0, 2])
    before = ((start.encode(TEXTS) - target) ** 2).mean()
    train(cfg)
    after = (
        (Encoder.from_pretrained(tmp_path / "run" / "final").encode(TEXTS) - target) ** 2
    ).mean()
    assert (
        after < 0.75 * before
    )  # measured 0.63x; held-out sentences: the student moved toward the teacher
    final = tmp_path / "run" / "final"
    student = Encoder.from_pretrained(final, device="cpu")
    assert student.model.config.num_hidden_layers == 2
    st = SentenceTransformer(str(final), device="cpu")
    torch.testing.assert_close(
        torch.from_numpy(st.encode(TEXTS)),
        torch.from_numpy(student.encode(TEXTS)),
        atol=1e-5,
        rtol=1e-4,
    )


def test_teacher_embeddings_from_embed_output_equal_the_teacher(tmp_path, minilm_dir):
    """distill_mse reading `contrasent embed`'s output (two shards merged by `embed merge`) for
    text_lines rows (shuffled; resumed) gives the on-the-fly teacher's loss on the same rows,
    through a projection 16 -> 32; a file of another row count, or rows without line numbers,
    is one clear error."""
    import numpy as np

    from conftest import build_tiny_bert
    from contrasent.cli.main import main
    from contrasent.data.registry import DataSpec, build_stream

    kw = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = build_tiny_bert(tmp_path / "t", minilm_dir, **kw)
    student = build_tiny_bert(tmp_path / "s", minilm_dir, seed=1, hidden_size=16,
                              intermediate_size=32, **kw)  # fmt: skip
    corpus = tmp_path / "c.txt"
    lines = [t if i % 7 != 3 else "" for i, t in enumerate(TEXTS * 4)]  # empty lines keep rows
    corpus.write_text("\n".join(lines) + "\n")
    emb = tmp_path / "teacher.npy"
    for shard in ("0/2", "1/2"):
        main(["embed", "--model", str(teacher), "--input", str(corpus), "--output", str(emb),
              "--shard", shard])  # fmt: skip
    assert main(["embed", "merge", "--output", str(emb)]) == 0
    assert np.load(emb).shape == (len(lines), 32)
    spec = DataSpec(kind="text_lines", path=str(corpus), shuffle_buffer=1000)
    stream = build_stream(spec, 8, 5, None)
    first = next(stream)
    state = stream.state_dict()
    second = next(stream)
    resumed = build_stream(spec, 8, 5, None)
    resumed.load_state_dict(state)
    assert next(resumed).lines == second.lines and first.lines != sorted(first.lines)
    assert all(
        lines[i] == t for b in (first, second) for i, t in zip(b.lines, b.texts, strict=True)
    )
    enc = Encoder.from_pretrained(student, device="cpu").eval()
    fly = build_objective("distill_mse", enc, teacher=str(teacher))
    table = build_objective("distill_mse", enc, teacher_embeddings=str(emb))
    table.projection.load_state_dict(fly.projection.state_dict())
    for batch in (first, second, second.slice(2, 6)):
        want = fly(enc, SentenceBatch(batch.texts))["loss"].item()
        assert table(enc, batch)["loss"].item() == pytest.approx(want, rel=1e-5)
    np.save(tmp_path / "short.npy", np.load(emb)[:-1])
    short = build_objective("distill_mse", enc, teacher_embeddings=str(tmp_path / "short.npy"))
    with pytest.raises(
        UserError, match=rf"has {len(lines) - 1} rows but .*c.txt has {len(lines)} lines"
    ):
        short(enc, first)
    with pytest.raises(UserError, match="use data.kind text_lines"):
        table(enc, SentenceBatch(TEXTS))
    with pytest.raises(UserError, match=r"text_lines reads one .txt \(.txt.gz\) file"):
        build_stream(DataSpec(kind="text_lines", path=[str(corpus)] * 2), 8, 5, None)


def test_saved_projection_loads_in_sentence_transformers(tmp_path, minilm_dir):
    """save_projection: the 16 -> 32 projection is the encoder's own Dense head (trained with
    it, no separate head), the loss falls, and the saved student embeds in 32 dimensions in
    sentence-transformers exactly as here (the Dense module in its folder)."""
    import json

    from sentence_transformers import SentenceTransformer

    from conftest import build_tiny_bert

    kw = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = build_tiny_bert(tmp_path / "t", minilm_dir, **kw)
    student = build_tiny_bert(tmp_path / "s", minilm_dir, seed=1, hidden_size=16,
                              intermediate_size=32, **kw)  # fmt: skip
    torch.manual_seed(0)
    enc = Encoder.from_pretrained(student, device="cpu", pooling="mean", normalize=False)
    obj = build_objective("distill_mse", enc, teacher=str(teacher), save_projection=True)
    assert obj.projection is None and len(enc.dense) == 1 and enc.hidden_size == 32
    losses = _train(obj, enc.train(), SentenceBatch(TEXTS), steps=20, lr=1e-3)
    assert losses[-1] < 0.3 * losses[0]
    enc.eval().save(tmp_path / "out")
    kinds = [m["type"] for m in json.loads((tmp_path / "out" / "modules.json").read_text())]
    assert kinds[-1].endswith("Dense")
    ours = Encoder.from_pretrained(tmp_path / "out", device="cpu").encode(TEXTS)
    theirs = SentenceTransformer(str(tmp_path / "out"), device="cpu").encode(TEXTS)
    assert ours.shape == (len(TEXTS), 32)
    np_close = torch.testing.assert_close
    np_close(torch.from_numpy(theirs), torch.from_numpy(ours), atol=1e-5, rtol=1e-4)
    np_close(torch.from_numpy(enc.encode(TEXTS)), torch.from_numpy(ours), atol=1e-5, rtol=1e-4)
