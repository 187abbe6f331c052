"""Checkpoints: a run interrupted and resumed in a new ``train()`` call ends bitwise equal to a
straight run, with dropout on (SimCSE's augmentation: the RNG states must be restored), and a
half-written checkpoint is never used."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contrasent.core.errors import UserError
from contrasent.data.registry import DataSpec
from contrasent.train import checkpoint as ckpt
from contrasent.train.config import (
    CheckpointConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from contrasent.train.loop import train

STEPS, SAVE_EVERY = 6, 3


class Killed(Exception):
    """Stands for the process dying (SIGKILL, pre-emption)."""


def _config(tiny: Path, wiki: Path, out: Path, objective=None, **train_opts) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(str(tiny), pooling="cls_before_pooler", max_seq_length=24),
        # the MLP head makes objective state part of the checkpoint
        objective=objective or {"name": "simcse_unsup"},
        data=DataSpec(kind="text", path=str(wiki), shuffle_buffer=500),
        train=OptimConfig(
            **{"batch_size": 8, "max_steps": STEPS, "lr": 3e-4, "warmup_steps": 2, **train_opts}
        ),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=SAVE_EVERY, keep_last=2),
        logging=LoggingConfig(log_every=1, tensorboard=False, progress_bar=False),
        output_dir=str(out),
    )


def _kill_after(step: int):
    def callback(s: int, record: dict) -> None:
        if s == step:
            raise Killed(f"killed after step {s}")

    return callback


def _state(out: Path) -> dict[str, torch.Tensor]:
    """Encoder + objective heads at the last step, and the saved final encoder."""
    state = torch.load(out / "checkpoints" / f"step-{STEPS:08d}" / "trainable.pt")
    final = load_file(out / "final" / "model.safetensors")
    return {**state, **{f"final.{k}": v for k, v in final.items()}}


def _equal(a, b) -> bool:
    if isinstance(a, dict):  # a module's extra state (the MLM generator)
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def _assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not _equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def _train_steps(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def wiki(shared_data: Path) -> Path:
    return shared_data / "corpus" / "wiki1m-head.txt"


UNCORRECTED = {
    "adam_bias_correction": False,
    "adam_eps": 1e-6,
    "weight_decay": 0.1,
    "lr_schedule": "slanted_triangular",
    "cut_frac": 0.34,  # cut = floor(6 x 0.34) = 2
    "warmup_steps": 0,
}

VARIANTS = {
    # plain step; MLM auxiliary: its private masking generator must be restored too
    "plain+mlm": ({"name": "simcse_unsup", "do_mlm": True}, {}),
    # gradient cache (RNG replay) + accumulation (two stream batches per step)
    "gradcache+accum": (None, {"mini_batch_size": 5, "grad_accum": 2}),
    # speed options: passes by length (inside the cache's mini-batches too)
    "buckets+mlm": ({"name": "simcse_unsup", "do_mlm": True}, {"length_buckets": 3}),
    "buckets+gradcache": (None, {"mini_batch_size": 5, "length_buckets": 2}),
    # the DeCLUTR/ConSERT optimizer (no bias correction: its own state dict) and ULMFiT's schedule
    "uncorrected-adamw+slanted": (None, UNCORRECTED),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_is_exact(tmp_path, tiny_bert_dir, wiki, variant):
    objective, opts = VARIANTS[variant]
    straight = _config(tiny_bert_dir, wiki, tmp_path / "straight", objective, **opts)
    train(straight)

    cfg = _config(tiny_bert_dir, wiki, tmp_path / "resumed", objective, **opts)
    with pytest.raises(Killed):
        train(cfg, callbacks=[_kill_after(SAVE_EVERY + 1)])
    assert [p.name for p in ckpt.list_checkpoints(cfg.output_dir)] == [f"step-{SAVE_EVERY:08d}"]
    result = train(dataclasses.replace(cfg, resume_from="latest"))  # a new train() call
    assert result.steps == STEPS

    _assert_bitwise(_state(tmp_path / "straight"), _state(tmp_path / "resumed"))
    # the replayed step 4 is logged once: lines past the checkpoint were dropped on resume
    assert _train_steps(tmp_path / "resumed") == list(range(1, STEPS + 1))
    if opts is UNCORRECTED:
        _assert_uncorrected_and_slanted(tmp_path / "resumed")


def test_resume_keeps_the_dropout_draw_the_run_started_with(tmp_path, tiny_bert_dir, wiki):
    """A run started with torch's dropout (``train.fast_dropout: false``, or any checkpoint
    written before the option existed) and resumed under the default (fast) config ends
    bitwise equal to the straight torch-dropout run, not to a fast-dropout one."""
    straight = _config(tiny_bert_dir, wiki, tmp_path / "straight", fast_dropout=False)
    train(straight)
    fast = _config(tiny_bert_dir, wiki, tmp_path / "fast")
    train(fast)
    cfg = _config(tiny_bert_dir, wiki, tmp_path / "resumed", fast_dropout=False)
    with pytest.raises(Killed):
        train(cfg, callbacks=[_kill_after(SAVE_EVERY + 1)])
    resumed = dataclasses.replace(cfg, resume_from="latest")
    train(dataclasses.replace(resumed, train=dataclasses.replace(cfg.train, fast_dropout=True)))

    _assert_bitwise(_state(tmp_path / "straight"), _state(tmp_path / "resumed"))
    with pytest.raises(AssertionError):  # the two draws give other weights
        _assert_bitwise(_state(tmp_path / "straight"), _state(tmp_path / "fast"))


def _assert_uncorrected_and_slanted(out: Path) -> None:
    """The options reached the run: the optimizer's state is UncorrectedAdamW's (no step
    counts), eps 1e-6, and the logged lr of step t + 1 is the slanted triangular value of t."""
    from contrasent.train.optim import slanted_triangular

    state = torch.load(out / "checkpoints" / f"step-{STEPS:08d}" / "optimizer.pt")
    assert {g["eps"] for g in state["param_groups"]} == {1e-6}
    assert all(set(s) == {"exp_avg", "exp_avg_sq"} for s in state["state"].values())
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lrs = [r["lr"] for r in map(json.loads, lines) if r["kind"] == "train"]
    want = [3e-4 * slanted_triangular(t, STEPS, 0.34, 32) for t in range(STEPS)]
    assert lrs == pytest.approx(want, rel=1e-9)


def test_rng_restore_matters(tmp_path, tiny_bert_dir, wiki, monkeypatch):
    """Teeth for the test above: resuming without restoring the RNG states (fresh dropout
    masks) ends with different weights, so dropout is on and bitwise equality is earned."""
    train(_config(tiny_bert_dir, wiki, tmp_path / "straight"))
    cfg = _config(tiny_bert_dir, wiki, tmp_path / "no_rng")
    with pytest.raises(Killed):
        train(cfg, callbacks=[_kill_after(SAVE_EVERY)])
    monkeypatch.setattr(ckpt, "set_rng_state", lambda state, module=None: None)
    train(dataclasses.replace(cfg, resume_from="latest"))
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "no_rng")
    assert any(not _equal(a[k], b[k]) for k in a)


def test_kill_while_saving_keeps_previous_checkpoint(tmp_path, tiny_bert_dir, wiki, monkeypatch):
    """A crash in the middle of writing checkpoint 6 leaves checkpoint 3 intact and only a
    ``.tmp-`` folder, which ``latest`` ignores; the resumed run still ends like a straight one."""
    train(_config(tiny_bert_dir, wiki, tmp_path / "straight"))
    cfg = _config(tiny_bert_dir, wiki, tmp_path / "crashed")
    real_save = ckpt._save

    def dying_save(obj, path):
        if path.name == "optimizer.pt" and f"step-{STEPS:08d}" in str(path):
            raise Killed("killed while writing the checkpoint")
        return real_save(obj, path)

    monkeypatch.setattr(ckpt, "_save", dying_save)
    with pytest.raises(Killed):
        train(cfg)
    monkeypatch.setattr(ckpt, "_save", real_save)

    root = tmp_path / "crashed" / "checkpoints"
    assert (root / f".tmp-step-{STEPS:08d}" / "trainable.pt").is_file()  # half-written
    assert not (root / f"step-{STEPS:08d}").exists()
    # a folder with a checkpoint's name but no trainer_state.json (e.g. a partial copy)
    fake = root / "step-00000005"
    fake.mkdir()
    (fake / "trainable.pt").write_bytes(b"partial")
    assert ckpt.resolve_resume("latest", tmp_path / "crashed") == root / f"step-{SAVE_EVERY:08d}"
    with pytest.raises(UserError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(fake), tmp_path / "crashed")

    train(dataclasses.replace(cfg, resume_from="latest"))
    _assert_bitwise(_state(tmp_path / "straight"), _state(tmp_path / "crashed"))
    assert not (root / f".tmp-step-{STEPS:08d}").exists()


def test_fresh_run_refuses_to_clobber_checkpoints(tmp_path, tiny_bert_dir, wiki):
    cfg = _config(tiny_bert_dir, wiki, tmp_path / "run")
    cfg.train.max_steps = SAVE_EVERY
    train(cfg)
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg)
    # resume_from latest on a finished run: nothing left to do, final model rewritten
    result = train(dataclasses.replace(cfg, resume_from="latest"))
    assert result.steps == SAVE_EVERY
