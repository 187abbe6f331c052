"""A full disk (ENOSPC), a quota or a read-only folder loses nothing: every write site stops with
one line naming the folder (and the bytes it needed, and what is intact), leaves no half-written
file where a later run reads it, and the same command continues after space is freed.

A real small tmpfs where the machine allows mounting one (root, as in CI); an injected
OSError(ENOSPC) at each write site otherwise (and in addition)."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from contrasent.core.fileio import NoSpace, path_error_line, room_warning
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

STEPS = 4


def _config(tiny: Path, wiki: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(str(tiny), pooling="cls", max_seq_length=16),
        objective={"name": "simcse_unsup"},
        data=DataSpec(kind="text", path=str(wiki), shuffle_buffer=200),
        train=OptimConfig(batch_size=4, max_steps=STEPS, lr=3e-4, warmup_steps=1),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=2, keep_last=2),
        logging=LoggingConfig(log_every=1, tensorboard=False, progress_bar=False),
        output_dir=str(out),
    )


@pytest.fixture(scope="module")
def wiki(shared_data: Path) -> Path:
    return shared_data / "corpus" / "wiki1m-head.txt"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_bert_dir, wiki) -> dict[str, torch.Tensor]:
    """final/ of the run that never stopped (one for every test here)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(_config(tiny_bert_dir, wiki, out))
    return _final(out)


def _no_space(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(out: Path) -> list[str]:
    """Temp files and folders a later run could trip over."""
    return [
        str(p.relative_to(out)) for p in out.rglob(".*") if ".tmp" in p.name or ".old-" in p.name
    ]


def _final(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A small tmpfs (resizable with remount), or a skip where mounting is not allowed."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=18m", "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    yield folder, resize
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_checkpoint_on_a_full_tmpfs_resumes_equal(tiny_bert_dir, wiki, tmpfs, straight):
    """The quickstart's fault: the second checkpoint does not fit. One NoSpace line naming the
    folder, the size and the intact checkpoint; no .tmp-step folder holding the disk; after the
    file system grows, resume_from latest ends equal to a run that never stopped."""
    small, resize = tmpfs
    out = small / "run"
    cfg = _config(tiny_bert_dir, wiki, out)
    with pytest.raises(NoSpace) as err:
        train(cfg)
    text = str(err.value)
    assert f"cannot write in {out / 'checkpoints'}: no space left" in text
    assert "needs about" in text and "MB" in text
    assert "checkpoint step-00000002 is intact" in text and "--resume_from latest" in text
    assert "\n" not in text
    assert not _leftovers(out)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000002"]
    assert ckpt.verify(out / "checkpoints" / "step-00000002") is None
    resize("64m")
    cfg.resume_from = "latest"
    train(cfg)
    _assert_same(_final(out), straight)
    assert not _leftovers(out)


def test_run_warns_when_one_checkpoint_does_not_fit(tiny_bert_dir, wiki, tmpfs, caplog):
    small, resize = tmpfs
    resize("1m")
    cfg = _config(tiny_bert_dir, wiki, small / "run")
    with pytest.raises(NoSpace):
        train(cfg)
    warned = [r.getMessage() for r in caplog.records if "one checkpoint" in r.getMessage()]
    assert warned and "free but one checkpoint (model + optimizer state) needs about" in warned[0]


def test_room_warning_counts_bytes(tmp_path):
    assert room_warning(tmp_path, 1, "x") is None
    assert "needs about" in room_warning(tmp_path, 10**18, "one checkpoint")


@pytest.mark.parametrize("site", ["checkpoint", "final"])
def test_injected_enospc_in_training(tmp_path, tiny_bert_dir, wiki, monkeypatch, site, straight):
    """Without a tmpfs: ENOSPC raised by the checkpoint writer (at step 4) or while writing
    final/: the checkpoint before it stays, no temp folder is left, and the run resumes."""
    out = tmp_path / "run"
    real_save = ckpt._save
    from contrasent.model import encoder as encoder_module

    if site == "checkpoint":
        monkeypatch.setattr(
            ckpt, "_save",
            lambda obj, path: _no_space() if "step-00000004" in str(path) else real_save(obj, path),
        )  # fmt: skip
    else:
        real_write = encoder_module.write_st
        monkeypatch.setattr(
            encoder_module, "write_st",
            lambda enc, tmp, mods: _no_space() if "final" in tmp.name else real_write(enc, tmp, mods),
        )  # fmt: skip
    cfg = _config(tiny_bert_dir, wiki, out)
    with pytest.raises(NoSpace, match="no space left") as err:
        train(cfg)
    assert "is intact" in str(err.value)
    assert not _leftovers(out) and not (out / "final").exists()
    kept = [p.name for p in ckpt.list_checkpoints(out)]
    assert kept == (
        ["step-00000002"] if site == "checkpoint" else ["step-00000002", "step-00000004"]
    )
    monkeypatch.undo()
    cfg.resume_from = "latest"
    train(cfg)
    _assert_same(_final(out), straight)


def _embed(encoder, src: Path, out: Path, **kw):
    from contrasent.serve.embed import embed_file

    return embed_file(encoder, src, out, batch_size=8, chunk_lines=5, show_progress=False, **kw)


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
    from contrasent.model.encoder import Encoder

    return Encoder.from_pretrained(str(tiny_bert_dir), pooling="mean")


def test_embed_chunk_and_merge_enospc_continue_equal(tmp_path, encoder, monkeypatch):
    from contrasent.serve import merge

    src = tmp_path / "in.txt"
    src.write_text("".join(f"sentence number {i}\n" for i in range(17)))
    whole = tmp_path / "whole.npy"
    _embed(encoder, src, whole)
    out = tmp_path / "out" / "o.npy"
    calls = {"n": 0}
    real_save = np.save

    def third_fails(f, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # half the chunk is written, then the disk is full
            f.write(b"\x93NUMPY")
            _no_space()
        real_save(f, arr, *a, **k)

    monkeypatch.setattr(np, "save", third_fails)
    with pytest.raises(NoSpace) as err:
        _embed(encoder, src, out)
    assert f"cannot write in {out.parent / 'o.npy.chunks'}" in str(err.value)
    assert "2 finished chunk(s) (10 rows)" in str(err.value)
    monkeypatch.setattr(np, "save", real_save)
    # the merge (assembling the chunks) fails next: the chunks stay for the next try
    monkeypatch.setattr(merge, "reserve", _no_space)
    with pytest.raises(NoSpace, match="finished chunk"):
        _embed(encoder, src, out)
    assert not out.exists() and not [p for p in out.parent.iterdir() if ".tmp" in p.name]
    chunk_folder = out.parent / "o.npy.chunks"
    assert not [p for p in chunk_folder.iterdir() if ".tmp" in p.name]
    monkeypatch.undo()
    summary = _embed(encoder, src, out)
    assert summary["resumed_rows"] == 17
    np.testing.assert_array_equal(np.load(out), np.load(whole))


def test_index_build_and_export_enospc(tmp_path, encoder, monkeypatch):
    from contrasent.model import export
    from contrasent.serve import index
    from contrasent.serve.index import build_index

    src = tmp_path / "corpus.txt"
    src.write_text("a cat\na dog\n\na bird\n")
    monkeypatch.setattr(index, "write_texts", _no_space)
    out = tmp_path / "idx"
    with pytest.raises(NoSpace, match=f"cannot write in {tmp_path}: no space") as err:
        build_index(encoder, src, out)
    assert "run the same command again" in str(err.value) and not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr(export, "_export_graph", _no_space)
    with pytest.raises(NoSpace, match="nothing was written"):
        export.export_onnx(encoder, tmp_path / "onnx")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnx")]


def test_os_errors_become_one_line(tmp_path):
    line = path_error_line(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")))
    assert line.startswith(f"cannot write in {tmp_path}: no space left on the device")
    assert path_error_line(OSError(errno.EROFS, "Read-only", str(tmp_path))).endswith(
        "read-only file system"
    )
    assert path_error_line(OSError(errno.EINVAL, "bad")) is None  # a bug keeps its traceback


def test_cli_output_folder_that_cannot_be_created(tmp_path, tiny_bert_dir, capsys):
    """`embed --output /proc/none/o.npy`: one line naming the folder, no traceback."""
    from contrasent.cli.main import main

    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n")
    bad = f"/proc/none-{uuid.uuid4().hex[:6]}/o.npy"
    code = main(["embed", "--model", str(tiny_bert_dir), "--input", str(src), "--output", bad])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and str(Path(bad).parent) in lines[0], err


def test_a_file_write_says_what_is_intact_and_leaves_nothing(tmp_path, monkeypatch):
    """Every atomic file write (eval's results, reports, manifests): one line naming the folder,
    the bytes and that the old file is as it was; an enclosing write site's detail wins."""
    from contrasent.core import fileio
    from contrasent.eval.tables import write_results

    out = tmp_path / "results.json"
    write_results({"stsb": 1.0}, out)
    before = out.read_text()
    monkeypatch.setattr(fileio.os, "fsync", _no_space)
    with pytest.raises(NoSpace) as err:
        write_results({"stsb": 2.0}, out)
    line = str(err.value)
    assert line.startswith(f"cannot write in {tmp_path}: no space") and "\n" not in line
    assert "needs about" in line and "results.json there is as it was before" in line
    assert out.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    with (
        pytest.raises(NoSpace, match="step-2 is intact"),
        fileio.no_room(tmp_path / "sub", None, "step-2 is intact"),
    ):
        fileio.atomic_write_text(tmp_path / "sub" / "x.json", "{}")


def test_data_prepare_on_a_full_disk_keeps_the_earlier_outputs(tmp_path, monkeypatch):
    from contrasent.data import prepare as prep

    src = tmp_path / "docs.txt"
    src.write_text("".join(f"Sentence number {i} is here for the test. And one more, {i}.\n"
                           for i in range(50)))  # fmt: skip
    cfg = prep.PrepareConfig(input=[str(src)], output=str(tmp_path / "out"), near_dup=False)
    prep.prepare(cfg)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    real = prep._Outputs.write

    def write(self, name, text):
        real(self, name, text)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prep._Outputs, "write", write)
    with pytest.raises(NoSpace, match="the files of an earlier run in .* are as they were"):
        prep.prepare(cfg)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
