"""The training loop end to end on CPU: it learns, it saves sentence-transformers models that load
with the same embeddings, it logs, it stops on a NaN, and its configuration is checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from contrasent.core.errors import UserError
from contrasent.data.batches import SentenceBatch
from contrasent.data.nli import read_nli_triplets
from contrasent.data.registry import DataSpec
from contrasent.model.encoder import Encoder
from contrasent.objectives.base import LossPart, Objective
from contrasent.objectives.simcse import SimCSEUnsup, SimCSEUnsupConfig
from contrasent.train import checkpoint as ckpt
from contrasent.train.config import (
    CheckpointConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from contrasent.train.loop import TrainingDiverged, TrainModule, train
from contrasent.train.optim import build_optimizer, no_decay_names

PROBE = ["A man is playing a guitar.", "Two dogs run in the snow.", "The market fell sharply."]


def _config(tiny: Path, out: Path, data: DataSpec, objective: dict, **train_opts) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(str(tiny), pooling="mean", max_seq_length=32),
        objective=objective,
        data=data,
        train=OptimConfig(**{"batch_size": 16, "max_steps": 4, "lr": 1e-3, **train_opts}),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=0),
        logging=LoggingConfig(log_every=1, tensorboard=False, progress_bar=False),
        output_dir=str(out),
    )


def _records(out: Path, kind: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _assert_st_loads_same(model_dir: Path) -> None:
    """sentence-transformers loads the folder and embeds exactly like our Encoder."""
    from sentence_transformers import SentenceTransformer

    ours = Encoder.from_pretrained(model_dir, device="cpu").encode(PROBE)
    st = SentenceTransformer(str(model_dir), device="cpu").encode(PROBE, convert_to_numpy=True)
    np.testing.assert_allclose(st, ours, atol=1e-5, rtol=1e-4)


def _triplet_accuracy(model_dir: Path, triplets) -> float:
    """Share of held-out (premise, entailment, contradiction) where the entailment is closer."""
    enc = Encoder.from_pretrained(model_dir, device="cpu")
    p, e, c = (
        enc.encode([t[i] for t in triplets], batch_size=256, normalize=True) for i in range(3)
    )
    return float(np.mean(np.sum(p * e, 1) > np.sum(p * c, 1)))


def test_supervised_simcse_learns_on_snli(tmp_path, tiny_bert_dir, senteval_dir):
    """Supervised SimCSE (premise, entailment, contradiction-as-hard-negative) trained on the
    SNLI dev triplets must rank the entailment above the contradiction more often on 1000
    held-out SNLI test triplets: a rank-based, per-premise measure (immune to a global change of
    the embedding geometry) on data the run never saw.

    Measured (tiny random BERT, mean pooling, batch 32, lr 1e-3, 50 steps, objective MLP off so
    the saved embedding is the trained one): 57.5% -> 73.9 / 73.8 / 73.6 / 72.9% over train seeds
    42 / 1 / 2 / 3, and 55.0 -> 72.7, 56.8 -> 77.6 for two other random models: +15.4 to +20.8
    points. Asserted: +8 points. Runs in ~5 s on one CPU thread.
    """
    held_out = read_nli_triplets(senteval_dir / "SNLI", "test")[0][:1000]
    before = _triplet_accuracy(tiny_bert_dir, held_out)
    data = DataSpec(kind="nli", path=str(senteval_dir / "SNLI"), split="dev", epochs=None)
    objective = {"name": "simcse_sup", "mlp": False}
    cfg = _config(tiny_bert_dir, tmp_path, data, objective, batch_size=32, max_steps=50)
    cfg.logging.log_every = 10
    result = train(cfg)
    after = _triplet_accuracy(result.final_dir, held_out)
    assert after - before >= 0.08, (before, after)
    losses = [r["loss"] for r in _records(tmp_path, "train")]
    assert np.mean(losses[-2:]) < losses[0]
    _assert_st_loads_same(result.final_dir)


def test_pairs_on_wiki_split_eval_best_and_logs(tmp_path, tiny_bert_dir, shared_data, senteval_dir):
    """1B-pairs style training on WikiSplit with STS-B dev evaluation every 3 steps: metrics.jsonl,
    TensorBoard, best/ by STS-B dev, final/, both loadable by sentence-transformers."""
    data = DataSpec(kind="pairs", path=str(shared_data / "pairs" / "wiki-split-tune.tsv"))
    cfg = _config(tiny_bert_dir, tmp_path, data, {"name": "pairs", "scale": 20.0}, max_steps=6)
    cfg.eval = EvalConfig(every_steps=3, data_dir=str(senteval_dir))
    cfg.logging = LoggingConfig(log_every=2, tensorboard=True, progress_bar=True)
    result = train(cfg)

    train_recs, evals = _records(tmp_path, "train"), _records(tmp_path, "eval")
    assert [r["step"] for r in train_recs] == [2, 4, 6]
    for r in train_recs:
        assert {"loss", "accuracy", "lr", "grad_norm", "sentences_per_s", "epoch"} <= r.keys()
        assert np.isfinite(r["loss"]) and r["sentences_per_s"] > 0
    assert [r["step"] for r in evals] == [3, 6]  # every 3 steps; the end is step 6
    assert all(r["stsb"] is not None and r["sickr"] is not None for r in evals)
    best = max(evals, key=lambda r: r["metric"])
    assert result.best_metric == best["metric"] and result.best_step == best["step"]
    assert list((tmp_path / "tensorboard").iterdir())
    for folder in (result.final_dir, result.best_dir):
        _assert_st_loads_same(folder)
    # the best folder holds the weights of the best step
    if result.best_step != 6:
        final, best_w = (
            load_file(result.final_dir / "model.safetensors"),
            load_file(result.best_dir / "model.safetensors"),
        )
        assert any(not torch.equal(final[k], best_w[k]) for k in final)


def test_unsup_simcse_cache_accum_never_saves_heads(tmp_path, tiny_bert_dir, shared_data):
    """Unsupervised SimCSE with its MLP head, gradient cache and accumulation: the saved model
    holds exactly the encoder's weights (same names as the starting model), never the MLP."""
    data = DataSpec(kind="text", path=str(shared_data / "corpus" / "wiki1m-head.txt"))
    cfg = _config(
        tiny_bert_dir, tmp_path, data, {"name": "simcse_unsup"}, batch_size=8, max_steps=2
    )
    cfg.model.pooling = "cls_before_pooler"
    cfg.train.mini_batch_size, cfg.train.grad_accum = 5, 2
    result = train(cfg)
    saved = load_file(result.final_dir / "model.safetensors")
    start = load_file(tiny_bert_dir / "model.safetensors")
    assert set(saved) == set(start)
    assert any(not torch.equal(saved[k], start[k]) for k in saved)  # it trained
    _assert_st_loads_same(result.final_dir)


class NaNAtCall(SimCSEUnsup):
    """Unsup SimCSE whose loss turns NaN at its ``at``-th call (one call per step here)."""

    def __init__(self, at: int) -> None:
        super().__init__(SimCSEUnsupConfig(mlp=False))
        self.at, self.calls = at, 0

    def loss(self, outputs, batch):
        out = super().loss(outputs, batch)
        self.calls += 1
        if self.calls == self.at:
            out["contrastive"] = LossPart(out["contrastive"].value * float("nan"))
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_bert_dir, shared_data):
    data = DataSpec(kind="text", path=str(shared_data / "corpus" / "wiki1m-head.txt"))
    cfg = _config(tiny_bert_dir, tmp_path, data, {"name": "simcse_unsup"}, batch_size=8)
    cfg.train.max_steps = 8
    cfg.checkpoint = CheckpointConfig(every_steps=2, keep_last=5)
    with pytest.raises(TrainingDiverged, match="step 5") as err:
        train(cfg, objective=NaNAtCall(at=5))
    assert isinstance(err.value, UserError)  # the CLI prints it without a traceback
    assert "step-00000004" in str(err.value)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step-00000002", "step-00000004"]
    state = torch.load(tmp_path / "checkpoints" / "step-00000004" / "trainable.pt")
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not (tmp_path / "final").exists()
    assert [r["step"] for r in _records(tmp_path, "diverged")] == [5]


# ----------------------------------------------------------------------------- configuration


RECIPE = """
model: {name_or_path: bert-base-uncased, pooling: cls_before_pooler}
objective: {name: simcse_unsup, temperature: 0.05, mlp: true}
data: {kind: text, path: wiki1m_for_simcse.txt, max_seq_length: 32}
train: {batch_size: 64, lr: 3.0e-5, mini_batch_size: 16}
eval: {every_steps: 125, metric: stsb}
output_dir: runs/unsup-simcse
"""


def test_yaml_recipe_and_overrides(tmp_path):
    from contrasent.cli.main import parse_train_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    args = [str(recipe), "--train.lr", "-1e-5", "--objective.temperature=0.1"]
    with pytest.raises(UserError, match="train.lr must be > 0"):  # a negative value, no '='
        parse_train_config(args)
    args[2] = "1e-5"
    cfg = parse_train_config(args)
    assert isinstance(cfg, TrainConfig) and isinstance(cfg.train, OptimConfig)
    assert cfg.train.lr == 1e-5 and cfg.train.batch_size == 64 and cfg.train.mini_batch_size == 16
    assert cfg.objective_name == "simcse_unsup"
    assert cfg.objective_options == {"temperature": 0.1, "mlp": True}
    assert cfg.data.kind == "text" and cfg.eval.every_steps == 125
    cfg.validate()


def test_config_errors():
    import yaml

    raw = yaml.safe_load(RECIPE)
    cfg = TrainConfig.from_dict(raw)
    with pytest.raises(UserError, match="does not divide by the 3 processes"):
        cfg.validate(world_size=3)
    cfg.validate(world_size=4)
    with pytest.raises(
        UserError, match="unknown option .train.bach_size. .did you mean batch_size"
    ):
        TrainConfig.from_dict({**raw, "train": {"bach_size": 8}})
    with pytest.raises(UserError, match="warmup_steps or train.warmup_ratio"):
        TrainConfig.from_dict(
            {**raw, "train": {"warmup_steps": 10, "warmup_ratio": 0.1}}
        ).validate()
    with pytest.raises(UserError, match="objective.name"):
        TrainConfig.from_dict({**raw, "objective": {"temperature": 0.05}}).validate()


class _OwnStep(Objective):
    """An objective with its own step (not views/embed/loss): the gradient cache cannot run it."""

    batch_type = SentenceBatch
    supports_gradient_cache = False

    def forward(self, encoder, batch, max_length=None):
        loss = encoder(encoder.tokenize(batch.texts, max_length)).pow(2).mean()
        return {"loss": loss}


def test_an_objective_with_its_own_step_must_say_so():
    with pytest.raises(TypeError, match="supports_gradient_cache = False"):

        class _Claims(Objective):  # overrides forward yet claims the cache can run it
            def forward(self, encoder, batch, max_length=None):
                return {}


def test_gradcache_refuses_an_objective_it_cannot_run_and_fp16_needs_cuda(
    tmp_path, tiny_bert_dir, shared_data
):
    data = DataSpec(kind="text", path=str(shared_data / "corpus" / "wiki1m-head.txt"))
    cfg = _config(tiny_bert_dir, tmp_path, data, {"name": "simcse_unsup"}, mini_batch_size=4)
    with pytest.raises(UserError, match="does not run under the gradient cache"):
        train(cfg, objective=_OwnStep())
    assert not (tmp_path / "config.json").exists()  # refused before anything was written
    cfg.train.mini_batch_size = 0
    assert train(cfg, objective=_OwnStep()).steps == 4  # the plain path runs it
    if not torch.cuda.is_available():
        cfg.train.mini_batch_size, cfg.train.mixed_precision = 0, "fp16"
        with pytest.raises(UserError, match="fp16 needs a CUDA device"):
            train(cfg)


def test_no_weight_decay_on_bias_and_layernorm(tiny_bert_dir):
    from contrasent.objectives import build_objective

    encoder = Encoder.from_pretrained(tiny_bert_dir, pooling="cls_before_pooler", device="cpu")
    module = TrainModule(encoder, build_objective("simcse_unsup", encoder))
    skip = no_decay_names(module)
    names = dict(module.named_parameters())
    assert "encoder.model.embeddings.LayerNorm.weight" in skip
    assert "encoder.model.encoder.layer.0.attention.self.query.bias" in skip
    assert "objective.mlp.0.bias" in skip
    assert "encoder.model.encoder.layer.0.attention.self.query.weight" not in skip
    assert "objective.mlp.0.weight" not in skip
    opt = build_optimizer(module, lr=1e-3, weight_decay=0.01)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    assert {id(p) for p in no_decay["params"]} == {id(names[n]) for n in skip}


# ----------------------------------------------------------------------------- several processes

DRIVER = """
import json, sys
from contrasent.train.config import TrainConfig
from contrasent.train.loop import train
train(TrainConfig.from_dict(json.loads(sys.argv[1])))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path, minilm_dir, shared_data):
    """``torchrun --nproc_per_node 2`` on CPU (gloo): each process embeds its half of the global
    batch (here through the gradient cache, 3 texts a forward), the objective gathers, DDP
    averages. With dropout off the weights after 3 steps equal one process with the whole batch
    and no cache (measured max difference 5e-7; BERT's unused pooler exercises
    find_unused_parameters). Launching several CPU processes must also make accelerate use them
    (by default it would run each as a lone main process)."""
    import os
    import subprocess
    import sys

    from conftest import build_tiny_bert

    tiny = build_tiny_bert(
        tmp_path / "tiny", minilm_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    data = DataSpec(kind="pairs", path=str(shared_data / "pairs" / "wiki-split-tune.tsv"))
    one = _config(tiny, tmp_path / "one", data, {"name": "pairs"}, batch_size=8, max_steps=3)
    train(one)
    two = one.to_dict()
    two["output_dir"] = str(tmp_path / "two")
    two["train"]["mini_batch_size"] = 3
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(script), json.dumps(two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    steps = [r["step"] for r in _records(tmp_path / "two", "train")]
    assert steps == [1, 2, 3]  # written once, by the main process


def test_training_truncation_never_reaches_evaluation_or_the_saved_model(
    tmp_path, tiny_bert_dir, shared_data, senteval_dir
):
    """SimCSE truncates training (here data.max_seq_length 8), not evaluation: the in-training STS
    numbers, ``contrasent eval`` of the saved model and the same weights loaded at the base
    model's full length agree, and the saved model keeps the base model's length."""
    from sentence_transformers import SentenceTransformer

    from contrasent.eval.sts import evaluate_sts

    data = DataSpec(kind="text", path=str(shared_data / "corpus" / "wiki1m-head.txt"))
    data.max_seq_length = 8
    cfg = _config(tiny_bert_dir, tmp_path, data, {"name": "simcse_unsup"}, max_steps=2)
    cfg.model.max_seq_length = None
    cfg.eval = EvalConfig(at_end=True, mode="dev", data_dir=str(senteval_dir))
    result = train(cfg)
    base = Encoder.from_pretrained(tiny_bert_dir, device="cpu").max_seq_length
    saved = Encoder.from_pretrained(result.final_dir, device="cpu")
    assert saved.max_seq_length == base == 128
    assert SentenceTransformer(str(result.final_dir), device="cpu").max_seq_length == base

    def sts(enc):
        res = evaluate_sts(lambda t: enc.encode(t, batch_size=256), senteval_dir, "dev")
        return res["tasks"]["STSBenchmark"]["spearman"]["dev"]

    full = Encoder.from_pretrained(result.final_dir, max_seq_length=base, device="cpu")
    in_training = result.last_eval["results"]["tasks"]["STSBenchmark"]["spearman"]["dev"]
    assert sts(saved) == pytest.approx(sts(full), abs=1e-9)
    assert in_training == pytest.approx(sts(full), abs=1e-6)
    cut = Encoder.from_pretrained(result.final_dir, max_seq_length=8, device="cpu")
    assert abs(sts(cut) - sts(full)) > 0.1  # truncating at the training length would show


def test_written_files_follow_the_umask_and_identical_final_is_linked(
    tmp_path, tiny_bert_dir, shared_data, senteval_dir
):
    """Files a run writes are readable by others under the usual umask (the atomic-write temp
    file's 0600 is not kept), and final/ shares best/'s files when they hold the same weights."""
    import os
    import stat

    data = DataSpec(kind="text", path=str(shared_data / "corpus" / "wiki1m-head.txt"))
    cfg = _config(tiny_bert_dir, tmp_path / "run", data, {"name": "simcse_unsup"}, max_steps=2)
    cfg.eval = EvalConfig(every_steps=2, at_end=True, mode="dev", data_dir=str(senteval_dir))
    cfg.checkpoint = CheckpointConfig(every_steps=2)
    old = os.umask(0o022)
    try:
        result = train(cfg)
    finally:
        os.umask(old)
    out = tmp_path / "run"
    for name in ("config.json", "final/contrasent_config.json", "final/model.safetensors",
                 "checkpoints/step-00000002/trainer_state.json"):  # fmt: skip
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert result.best_step == 2 == result.steps  # the last evaluation was the best
    a, b = out / "final" / "model.safetensors", out / "best" / "model.safetensors"
    assert a.stat().st_ino == b.stat().st_ino  # one copy on disk
    _assert_st_loads_same(out / "final")


def test_final_model_card_reflects_the_run(tmp_path, tiny_bert_dir, shared_data, senteval_dir):
    """final/README.md: the method, the recipe's steps and batch, the STS numbers the run
    measured before and after training, alignment / uniformity."""
    import yaml

    data = DataSpec(kind="text", path=str(shared_data / "corpus" / "wiki1m-head.txt"))
    cfg = _config(tiny_bert_dir, tmp_path / "run", data, {"name": "simcse_unsup"}, max_steps=3)
    cfg.eval = EvalConfig(at_start=True, at_end=True, mode="dev", data_dir=str(senteval_dir))
    result = train(cfg)
    text = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "simcse_unsup" in yaml.safe_load(text.split("---\n")[1])["tags"]
    assert "SimCSE (unsupervised)" in text and "**Steps:** 3" in text
    assert f"**Global batch size:** {cfg.train.batch_size}" in text
    for record in (result.first_eval, result.last_eval):
        assert f"| {record['stsb']:.2f} |" in text  # STS-B dev before and after
    assert f"Alignment {result.last_eval['alignment']:.4f}" in text
