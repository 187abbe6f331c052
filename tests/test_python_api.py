"""``contrasent.train(config, data=...)``: a list of texts and a ``datasets.Dataset`` of pairs
train exactly as the same rows in a file do; resume with in-memory data is exact with the same
data and one clear error with other data; pathlib paths are accepted; switching the objective
on the command line drops the recipe's options of the other objective."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import contrasent
from contrasent.cli.parse import parse_args
from contrasent.core.errors import UserError
from contrasent.train.config import TrainConfig

STEPS = 4


def _cfg(tiny: Path, out: Path, objective: str, **data) -> dict:
    return {
        "model": {"name_or_path": Path(tiny), "pooling": "mean", "max_seq_length": 24},
        "objective": {"name": objective},
        "data": {"shuffle_buffer": 64, **data},
        "train": {"batch_size": 8, "max_steps": STEPS, "lr": 1e-3},
        "eval": {"every_steps": 0, "at_end": False},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "logging": {"log_every": 1, "tensorboard": False, "progress_bar": False},
        "output_dir": out,  # a pathlib.Path
    }


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def _same(a: Path, b: Path) -> bool:
    x, y = _weights(a), _weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def texts(shared_data: Path) -> list[str]:
    lines = (shared_data / "corpus" / "wiki1m-head.txt").read_text().splitlines()[:200]
    return [t.strip() for t in lines if t.strip()]


def test_list_of_texts_trains_like_the_file(tmp_path, tiny_bert_dir, texts):
    txt = tmp_path / "t.txt"
    txt.write_text("\n".join(texts) + "\n")
    file_run = contrasent.train(_cfg(tiny_bert_dir, tmp_path / "file", "simcse_unsup"), txt)
    list_run = contrasent.train(_cfg(tiny_bert_dir, tmp_path / "list", "simcse_unsup"), texts)
    assert file_run.steps == list_run.steps == STEPS
    assert _same(tmp_path / "file", tmp_path / "list")
    with pytest.raises(UserError, match="no such file"):
        contrasent.train(_cfg(tiny_bert_dir, tmp_path / "x", "simcse_unsup"), tmp_path / "no.txt")


def test_dataset_of_pairs_trains_like_the_tsv(tmp_path, tiny_bert_dir, shared_data):
    import datasets

    rows = (shared_data / "pairs" / "wiki-split-tune.tsv").read_text().splitlines()[:120]
    a, p = zip(*(r.split("\t")[:2] for r in rows), strict=True)
    tsv = tmp_path / "p.tsv"
    tsv.write_text("".join(f"{x}\t{y}\n" for x, y in zip(a, p, strict=True)))
    ds = datasets.Dataset.from_dict({"sentence1": list(a), "sentence2": list(p)})
    contrasent.train(_cfg(tiny_bert_dir, tmp_path / "tsv", "pairs", kind="pairs"), tsv)
    # columns in order = (anchor, positive), sentence-transformers' rule
    contrasent.train(_cfg(tiny_bert_dir, tmp_path / "ds", "pairs"), ds)
    assert _same(tmp_path / "tsv", tmp_path / "ds")
    # a list of tuples is the same rows again
    contrasent.train(
        _cfg(tiny_bert_dir, tmp_path / "tuples", "pairs"), list(zip(a, p, strict=True))
    )
    assert _same(tmp_path / "tsv", tmp_path / "tuples")


class Killed(Exception):
    pass


def _kill(step: int):
    def callback(s: int, record: dict) -> None:
        if s == step:
            raise Killed

    return callback


def test_resume_with_in_memory_data(tmp_path, tiny_bert_dir, texts):
    contrasent.train(_cfg(tiny_bert_dir, tmp_path / "straight", "simcse_unsup"), texts)
    cfg = _cfg(tiny_bert_dir, tmp_path / "resumed", "simcse_unsup")
    with pytest.raises(Killed):
        contrasent.train(cfg, texts, callbacks=[_kill(3)])
    with pytest.raises(UserError, match="not the data of the checkpoint"):
        contrasent.train({**cfg, "resume_from": "latest"}, texts[::-1])
    contrasent.train({**cfg, "resume_from": "latest"}, list(texts))  # equal, not the same object
    assert _same(tmp_path / "straight", tmp_path / "resumed")


def test_objective_switch_on_the_command_line_drops_the_other_options(capsys):
    cfg, _ = parse_args(
        TrainConfig, ["configs/quickstart-cpu.yaml", "--objective.name", "pairs"], recipe_first=True
    )
    assert cfg.objective == {"name": "pairs"}
    assert "dropped its options" in capsys.readouterr().err
    # an option given on the command line stays; the same name drops nothing
    argv = ["configs/quickstart-cpu.yaml", "--objective.scale", "20", "--objective.name", "pairs"]
    cfg, _ = parse_args(TrainConfig, argv, recipe_first=True)
    assert cfg.objective == {"name": "pairs", "scale": 20}
    capsys.readouterr()
    argv = ["configs/quickstart-cpu.yaml", "--objective.name", "simcse_unsup"]
    cfg, _ = parse_args(TrainConfig, argv, recipe_first=True)
    assert "mlp" in cfg.objective and capsys.readouterr().err == ""
