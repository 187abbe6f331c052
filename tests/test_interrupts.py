"""Nothing lost: real signals and SIGKILL sent to real training processes, damaged checkpoints,
and a failed run in a folder that holds an earlier run's model.

Every interrupted run is resumed with ``--resume_from latest`` and must end with weights
bitwise equal to an uninterrupted run of the same recipe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from contrasent.core.errors import UserError
from contrasent.train.config import TrainConfig
from contrasent.train.loop import train

STEPS = 8

# Runs the CLI in this process after making chosen phases stall (and say so on stdout), so the
# test can SIGKILL the process exactly mid-checkpoint-write, mid-evaluation or mid-step.
DRIVER = r"""
import os, sys, time
from contrasent.cli import main as cli
from contrasent.train import checkpoint, loop, selection, signals

phase, nth = (os.environ.get("STALL", "none:0").split(":") + ["0"])[:2]
seen = {"checkpoint": 0, "eval": 0, "step": 0}

signalled = []
handle = signals.StopSignals._handle
def noted_handle(self, signum, frame):
    signalled.append(signum)
    return handle(self, signum, frame)
signals.StopSignals._handle = noted_handle

def stall(name):
    # until SIGKILL, or until a SIGINT/SIGTERM has been handled (a sleep would go on after it)
    seen[name] += 1
    if name == phase and seen[name] == int(nth):
        print(f"MARK {name}", flush=True)
        end = time.monotonic() + 60
        while time.monotonic() < end and not signalled:
            time.sleep(0.02)

save = checkpoint._save
def slow_save(obj, path):
    save(obj, path)
    if path.name == "optimizer.pt":  # trainable.pt written, the rest not yet
        stall("checkpoint")
checkpoint._save = slow_save

run_evaluation = selection.run_evaluation
def slow_sts(*a, **kw):
    stall("eval")
    return run_evaluation(*a, **kw)
selection.run_evaluation = slow_sts

forward = loop.TrainModule.forward
def slow_forward(self, batch):
    out = forward(self, batch)
    stall("step")  # the forward done, its backward and the update not
    return out
loop.TrainModule.forward = slow_forward

sys.exit(cli.main(sys.argv[1:]))
"""


def _recipe(tiny: Path, shared: Path, senteval: Path, out: Path, **extra) -> dict:
    recipe = {
        "model": {"name_or_path": str(tiny), "pooling": "cls_before_pooler"},
        "objective": {"name": "simcse_unsup"},  # dropout + MLP head: RNG and head state matter
        "data": {"kind": "text", "path": str(shared / "corpus" / "wiki1m-head.txt"),
                 "shuffle_buffer": 200, "max_seq_length": 16},
        "train": {"batch_size": 8, "max_steps": STEPS, "lr": 3e-4},
        "eval": {"every_steps": 3, "at_end": False, "mode": "dev", "metric": "sickr",
                 "data_dir": str(senteval), "batch_size": 512},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "logging": {"tensorboard": False, "progress_bar": False, "log_every": 1},
        "output_dir": str(out),
    }  # fmt: skip
    recipe.update(extra)
    return recipe


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cli(recipe: Path, *args: str, stall: str = "none:0") -> subprocess.Popen:
    env = {**os.environ, "STALL": stall, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", DRIVER, "train", str(recipe), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, mark: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.strip() == f"MARK {mark}":
            return
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"never reached {mark}: {proc.stderr.read()[-2000:]}")


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def _assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def reference(tiny_bert_dir, shared_data, senteval_dir, tmp_path_factory):
    """The uninterrupted run, through the same driver."""
    out = tmp_path_factory.mktemp("straight") / "run"
    recipe = _write(out.parent / "r.yaml", _recipe(tiny_bert_dir, shared_data, senteval_dir, out))
    proc = _cli(recipe)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    return _weights(out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_and_resume_is_bitwise_equal(
    signum, reference, tiny_bert_dir, shared_data, senteval_dir, tmp_path
):
    """The signal lands mid-step (step 3, between the forward and the update): the step is
    finished, a checkpoint written (step 3 is no checkpoint step), the exact resume command
    printed, exit 128 + signal; that command then ends bitwise equal to the straight run."""
    out = tmp_path / "run"
    recipe = _write(tmp_path / "r.yaml", _recipe(tiny_bert_dir, shared_data, senteval_dir, out))
    proc = _cli(recipe, stall="step:3")
    _wait_for(proc, "step")
    proc.send_signal(signum)
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert code == 128 + signum, err[-3000:]
    assert f"stopped after step 3 of {STEPS}" in err and "step-00000003" in err
    resume = next(line for line in err.splitlines() if line.startswith("resume with: "))
    assert resume.endswith("--resume_from latest") and str(recipe) in resume
    assert "Traceback" not in err
    args = resume.removeprefix("resume with: contrasent ").split()
    again = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_bitwise(_weights(out), reference)


def test_sigkill_anywhere_then_resume_is_bitwise_equal(
    reference, tiny_bert_dir, shared_data, senteval_dir, tmp_path
):
    """SIGKILL mid-checkpoint-write (step 4's: trainable.pt written, the rest not), then
    mid-evaluation (step 6's), then mid-step (step 7): each time --resume_from latest goes on from
    the last complete checkpoint (the half-written one is never read) and the end is bitwise
    equal to the straight run."""
    out = tmp_path / "run"
    recipe = _write(tmp_path / "r.yaml", _recipe(tiny_bert_dir, shared_data, senteval_dir, out))
    # nth occurrence, counted from the start of each process: a resume from step 2 rewrites
    # checkpoint 4 (its 1st save), evaluates at 3 then 6 (2nd eval), steps 5, 6, 7 (3rd step)
    for i, stall in enumerate(["checkpoint:2", "eval:2", "step:3"]):
        args = ("--resume_from", "latest") if i else ()
        proc = _cli(recipe, *args, stall=stall)
        _wait_for(proc, stall.split(":")[0])
        proc.kill()
        proc.wait(timeout=60)
        leftovers = list((out / "checkpoints").glob(".tmp-*"))
        if stall.startswith("checkpoint"):
            assert leftovers  # killed mid-write: an incomplete temp folder, never loaded
    proc = _cli(recipe, "--resume_from", "latest")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    _assert_bitwise(_weights(out), reference)
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_damaged_checkpoint_is_skipped_with_a_warning(tiny_bert_dir, shared_data, senteval_dir,
                                                      tmp_path, caplog):  # fmt: skip
    raw = _recipe(tiny_bert_dir, shared_data, senteval_dir, tmp_path / "a", eval={"at_end": False})
    straight = train(raw)
    killed = {**raw, "output_dir": str(tmp_path / "b")}

    def stop_at(step, record):
        return step == 6

    train(killed, callbacks=[stop_at])  # checkpoints 4 and 6 kept
    newest = tmp_path / "b" / "checkpoints" / "step-00000006" / "trainable.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated after the fact
    (tmp_path / "b" / "final").rename(tmp_path / "b" / "final-early")
    with caplog.at_level("WARNING"):
        train({**killed, "resume_from": "latest"})
    assert "step-00000006 is damaged: trainable.pt does not match its checksum" in caplog.text
    _assert_bitwise(_weights(tmp_path / "b"), _weights(Path(straight.output_dir)))


def test_a_failed_run_never_deletes_the_previous_model(tiny_bert_dir, shared_data, senteval_dir,
                                                       tmp_path):  # fmt: skip
    """overwrite_output_dir: the earlier run's files stay until the new run has a checkpoint or
    a model; a bad data path, a crash in step 1, or a SIGKILL before the first checkpoint all
    leave them as they were."""
    raw = _recipe(tiny_bert_dir, shared_data, senteval_dir, tmp_path, eval={"at_end": False})
    raw["train"]["max_steps"] = 2
    train(raw)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def unchanged():
        now = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        return now == before

    again = {**raw, "overwrite_output_dir": True}
    typo = {**again, "data": {**raw["data"], "path": str(shared_data / "corpus" / "wiki1m.txt")}}
    with pytest.raises(UserError, match="no such file"):
        train(typo)
    assert unchanged()

    def crash(step, record):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(again, callbacks=[crash])
    assert unchanged()

    recipe = _write(tmp_path.parent / f"{tmp_path.name}.yaml", again)
    proc = _cli(recipe, stall="step:1")  # the new run stalls in its first step: kill it there
    _wait_for(proc, "step")
    proc.kill()
    proc.wait(timeout=60)
    assert (tmp_path / ".previous").is_dir() and not unchanged()
    fresh = TrainConfig.from_dict({**raw, "train": {**raw["train"], "max_steps": 0}})
    with pytest.raises(UserError):  # the next run puts the earlier one back first
        train(fresh)
    assert unchanged()
    json.loads((tmp_path / "config.json").read_text())
