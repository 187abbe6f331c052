"""Logs a scheduler keeps: with stderr a file (Slurm, nohup), progress is plain lines at an
interval (step, loss, lr, rate, ETA), never a tqdm bar's carriage returns."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from contrasent.core import progress as progress_module
from contrasent.core.progress import PlainProgress, duration, progress


def test_plain_lines_at_an_interval(monkeypatch):
    out = io.StringIO()
    clock = iter([0.0, 10.0, 20.0, 31.0, 40.0, 65.0, 70.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    bar = PlainProgress(10, desc="train", unit="step", every=30, stream=out)
    for step in range(1, 6):
        bar.set_postfix(loss=f"{1 / step:.3g}", lr="1.00e-04")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    # t=31: 3 steps in 31 s; t=65: 5 steps; close at t=70
    assert lines[0] == (
        "train: step 3/10 (30%), loss 0.333, lr 1.00e-04, 0.0968 step/s, elapsed 31s, ETA 1m12s"
    )
    assert lines[1].startswith("train: step 5/10 (50%), loss 0.2,") and "ETA" in lines[1]
    assert len(lines) == 2 and "\r" not in out.getvalue()  # close: step 5 was said already
    clock = iter([80.0, 81.0])
    bar.update(1)
    bar.close()  # a count not yet printed: one last line
    assert out.getvalue().splitlines()[-1].startswith("train: step 6/10 (60%)")


def test_short_task_prints_nothing():
    out = io.StringIO()
    with PlainProgress(5, desc="encode", unit="sent", every=30, stream=out) as bar:
        bar.update(5)
    assert out.getvalue() == ""
    assert duration(3725) == "1h02m" and duration(65) == "1m05s" and duration(4) == "4s"


def test_progress_is_plain_when_stderr_is_a_file(monkeypatch):
    monkeypatch.setattr(progress_module, "is_terminal", lambda stream=None: False)
    assert isinstance(progress(3, "x"), PlainProgress)
    monkeypatch.setattr(progress_module, "is_terminal", lambda stream=None: True)
    assert not isinstance(progress(3, "x", disable=True), PlainProgress)


def test_train_and_embed_log_plain_lines(tmp_path, tiny_bert_dir, shared_data, capfd, monkeypatch):
    """The real commands with stderr captured (not a terminal) and a 0 s interval: every step a
    plain line with loss, lr, rate and ETA; embed likewise per chunk."""
    from contrasent.model.encoder import Encoder
    from contrasent.serve.embed import embed_file
    from contrasent.train.loop import train

    monkeypatch.setenv("CONTRASENT_PROGRESS_S", "0")
    train({
        "model": {"name_or_path": str(tiny_bert_dir), "max_seq_length": 16},
        "objective": {"name": "simcse_unsup"},
        "data": {"kind": "text", "path": str(shared_data / "corpus" / "wiki1m-head.txt")},
        "train": {"max_steps": 3, "batch_size": 4},
        "eval": {"at_end": False},
        "logging": {"tensorboard": False},
        "output_dir": str(tmp_path / "run"),
    })  # fmt: skip
    err = capfd.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("train: step ")]
    assert [s.split(",")[0] for s in steps[:3]] == [
        "train: step 1/3 (33%)", "train: step 2/3 (67%)", "train: step 3/3 (100%)",
    ]  # fmt: skip
    assert all("loss " in s and "lr " in s and "step/s" in s for s in steps)
    assert "ETA" in steps[0]
    assert not [line for line in err.split("\n") if "train" in line and "\r" in line]
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line {i}\n" for i in range(12)))
    enc = Encoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    embed_file(enc, src, tmp_path / "o.npy", chunk_lines=4, show_progress=True)
    err = capfd.readouterr().err
    rows = [line for line in err.splitlines() if line.startswith("embed in.txt: row ")]
    assert rows[0].startswith("embed in.txt: row 4/12 (33%)")
    assert not [line for line in err.split("\n") if "embed" in line and "\r" in line]
    assert np.load(tmp_path / "o.npy").shape[0] == 12
    assert Path(tmp_path / "run" / "final").is_dir()
