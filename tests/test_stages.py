"""Multi-stage recipes: stages run in sequence, each from the previous stage's final encoder,
resumable across the stage boundary, with one before/after table; early stopping (patience)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contrasent.core.errors import UserError
from contrasent.train.config import TrainConfig
from contrasent.train.loop import train
from contrasent.train.stages import stage_configs


class Killed(Exception):
    """Stands for the process dying."""


def _recipe(tiny: Path, shared: Path, senteval: Path, out: Path, eval_at_end=False) -> dict:
    return {
        "model": {"name_or_path": str(tiny), "pooling": "mean"},
        "train": {"batch_size": 8, "max_steps": 3, "lr": 1e-3},
        "eval": {
            "at_end": eval_at_end,
            "at_start": eval_at_end,
            "mode": "dev",
            "data_dir": str(senteval),
        },  # fmt: skip
        "checkpoint": {"every_steps": 1, "keep_last": 1},
        "logging": {"tensorboard": False, "progress_bar": False, "log_every": 1},
        "output_dir": str(out),
        "stages": [
            {
                "name": "pairs",
                "objective": {"name": "pairs"},
                "data": {
                    "kind": "pairs",
                    "path": str(shared / "pairs" / "wiki-split-tune.tsv"),
                    "max_seq_length": 16,
                },  # fmt: skip
                "train": {"max_steps": 2},
            },
            {
                "objective": {"name": "simcse_unsup", "mlp": False},
                "data": {"kind": "text", "path": str(shared / "corpus" / "wiki1m-head.txt")},
            },
        ],
    }


def test_stage_configs_merge_and_chain(tiny_bert_dir, shared_data, senteval_dir, tmp_path):
    cfg = TrainConfig.from_dict(_recipe(tiny_bert_dir, shared_data, senteval_dir, tmp_path))
    (f1, s1), (f2, s2) = stage_configs(cfg)
    assert (f1, f2) == ("stage-1-pairs", "stage-2-simcse_unsup")
    assert s1.train.max_steps == 2 and s2.train.max_steps == 3  # merged key by key
    assert s1.train.lr == s2.train.lr == 1e-3 and s1.data.max_seq_length == 16
    assert s2.data.max_seq_length is None  # data replaced whole, not merged
    assert s2.model.name_or_path == str(tmp_path / f1 / "final") and s2.model.pooling == "mean"
    cfg.validate()
    bad = _recipe(tiny_bert_dir, shared_data, senteval_dir, tmp_path)
    bad["stages"][1]["objectiv"] = {}
    with pytest.raises(UserError, match="'objectiv'.*did you mean objective"):
        TrainConfig.from_dict(bad).validate()
    bad["stages"][1] = {"model": {"name_or_path": "x"}}
    with pytest.raises(UserError, match="name_or_path.*cannot change between stages"):
        TrainConfig.from_dict(bad).validate()


def test_stage_init_from_is_checked(tiny_bert_dir, shared_data, senteval_dir, tmp_path):
    raw = _recipe(tiny_bert_dir, shared_data, senteval_dir, tmp_path)
    raw["stages"][1]["init_from"] = "best"
    (_, s2) = stage_configs(TrainConfig.from_dict(raw))[1]
    assert s2.model.name_or_path == str(tmp_path / "stage-1-pairs" / "best")
    for where, value, match in (
        (1, "bst", r"stages\[1\]\.init_from must be one of final, best, got 'bst'"),
        (0, "final", r"stages\[0\]\.init_from: the first stage starts from model.name_or_path"),
    ):
        bad = _recipe(tiny_bert_dir, shared_data, senteval_dir, tmp_path)
        bad["stages"][where]["init_from"] = value
        with pytest.raises(UserError, match=match):
            TrainConfig.from_dict(bad).validate()
    raw["stages"][0]["eval"] = {"keep_best": False}
    with pytest.raises(UserError, match=r"init_from is best but stage 1 keeps no best/"):
        TrainConfig.from_dict(raw).validate()


def test_stages_chain_and_resume_across_the_boundary(
    tiny_bert_dir, shared_data, senteval_dir, tmp_path
):
    """Stage 2 starts from stage 1's best/ (init_from: best), which stage 1's only evaluation
    (before its first step) made the untrained model: stage 2 is then bitwise the one-stage run
    from that model, stage 1's training discarded; a kill in stage 2 resumes to the same bits."""
    raw = _recipe(tiny_bert_dir, shared_data, senteval_dir, tmp_path / "straight")
    raw["stages"][0]["eval"] = {"at_start": True, "at_end": False}
    raw["stages"][1]["init_from"] = "best"
    straight = train(raw)
    assert [f for f, _ in straight.stages] == ["stage-1-pairs", "stage-2-simcse_unsup"]
    assert (
        straight.steps == 5
        and (tmp_path / "straight" / "final").resolve()
        == (tmp_path / "straight" / "stage-2-simcse_unsup" / "final").resolve()
    )
    stage2 = json.loads((tmp_path / "straight/stage-2-simcse_unsup/config.json").read_text())
    assert stage2["model"]["name_or_path"] == str(tmp_path / "straight/stage-1-pairs/best")
    assert straight.stages[0][1].best_step == 0
    first = load_file(tmp_path / "straight/stage-1-pairs/final/model.safetensors")
    best = load_file(tmp_path / "straight/stage-1-pairs/best/model.safetensors")
    last = load_file(tmp_path / "straight/final/model.safetensors")
    assert any(not torch.equal(first[k], best[k]) for k in first)  # stage 1 trained on
    assert any(not torch.equal(best[k], last[k]) for k in best)  # stage 2 trained on
    one = {k: v for k, v in raw.items() if k != "stages"} | raw["stages"][1]
    one = {k: v for k, v in one.items() if k not in ("init_from",)}
    one["output_dir"] = str(tmp_path / "one-stage")
    alone = load_file(Path(train(one).final_dir) / "model.safetensors")
    assert all(torch.equal(last[k], alone[k]) for k in last)  # from best/ = the untrained model

    killed = {**raw, "output_dir": str(tmp_path / "killed")}
    calls = []

    def die_in_stage_two(step, record):
        calls.append(step)
        if len(calls) == 4:  # stage 1's steps 1-2, then stage 2's steps 1-2 (saved), then die
            raise Killed

    with pytest.raises(Killed):
        train(killed, callbacks=[die_in_stage_two])
    assert (tmp_path / "killed/stage-1-pairs/stage_done.json").is_file()
    assert not (tmp_path / "killed/stage-2-simcse_unsup/stage_done.json").exists()
    resumed = train({**killed, "resume_from": "latest"})
    assert resumed.stages[0][1].steps == 2 and resumed.stages[1][1].steps == 3
    again = load_file(tmp_path / "killed/final/model.safetensors")
    assert all(torch.equal(last[k], again[k]) for k in last)  # bitwise equal to the straight run


def test_staged_cli_run_prints_one_before_after_table(
    tiny_bert_dir, shared_data, senteval_dir, tmp_path, capsys
):
    import yaml

    from contrasent.cli.main import main

    recipe = tmp_path / "staged.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tiny_bert_dir, shared_data, senteval_dir,
                                             tmp_path / "run", eval_at_end=True)))  # fmt: skip
    assert main(["train", str(recipe)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("STS dev: Spearman x100") :]
    assert "before (step 0)" in table
    assert "after (stage-1-pairs, step 2)" in table
    assert "after (stage-2-simcse_unsup, step 3)" in table
    assert table.count("STSBenchmark") == 1  # one table, one row per stage


def test_patience_stops_after_evaluations_without_gain(tiny_bert_dir, shared_data, senteval_dir,
                                                       tmp_path):  # fmt: skip
    """lr 0: the metric never improves after the first evaluation, so patience 2 stops the run
    at the third evaluation (steps 1, 2, 3) of 20 steps; best/ is the first evaluation."""
    cfg = TrainConfig.from_dict({
        "model": {"name_or_path": str(tiny_bert_dir), "pooling": "mean"},
        "objective": {"name": "simcse_unsup"},
        "data": {"kind": "text", "path": str(shared_data / "corpus" / "wiki1m-head.txt")},
        "train": {"batch_size": 8, "max_steps": 20, "lr": 1e-12},
        "eval": {"every_steps": 1, "patience": 2, "mode": "dev", "metric": "sickr",
                 "data_dir": str(senteval_dir)},
        "checkpoint": {"every_steps": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
        "output_dir": str(tmp_path),
    })  # fmt: skip
    result = train(cfg)
    assert result.stopped_early and result.steps == 3 and result.best_step == 1
    with pytest.raises(UserError, match="patience needs periodic evaluation"):
        TrainConfig.from_dict({**cfg.to_dict(), "eval": {"patience": 3}}).validate()


def test_command_line_train_options_reach_every_stage(monkeypatch):
    """`--train.max_steps 4` caps each stage of a staged recipe (over the stages' own 40 and 60);
    the stages' other settings (their learning rates) and their data stay their own."""
    from contrasent.cli.main import parse_train_config

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    recipe = "configs/consert-sup-unsup-cpu.yaml"
    plain = [c for _, c in stage_configs(parse_train_config([recipe]))]
    capped = [c for _, c in stage_configs(parse_train_config([recipe, "--train.max_steps", "4"]))]
    assert [c.train.max_steps for c in plain] == [40, 60]
    assert [c.train.max_steps for c in capped] == [4, 4]
    assert [c.train.lr for c in capped] == [c.train.lr for c in plain]
    assert (
        [c.data.kind for c in capped] == [c.data.kind for c in plain] == ["nli_pairs", "sts_texts"]
    )


def test_ends_epoch_counts_batches_across_accumulation():
    from contrasent.train.runtime import ends_epoch

    # 3 batches an epoch, 1 batch a step: steps 3, 6, 9 end epochs
    assert [s for s in range(1, 10) if ends_epoch(s, 3, 1)] == [3, 6, 9]
    # 2 batches a step: the epochs end inside steps 2 (batch 3) and 5 (batch 9), and with step 3
    assert [s for s in range(1, 7) if ends_epoch(s, 3, 2)] == [2, 3, 5, 6]


def test_eval_at_epoch_end_and_patience_counts_it(tiny_bert_dir, senteval_dir, tmp_path):
    """24 distinct texts, batch 8: 3 steps an epoch. every_steps 2 + at_epoch_end evaluates at
    steps 2, 3, 4, 6, 8, 9 (6: once); with lr ~0 and patience 2 (epoch ends only) the run stops
    at its third evaluation, step 9, as sentence-transformers' fit counts them in ConSERT."""
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"sentence number {i} about topic {i % 5}\n" for i in range(24)))
    raw = {
        "model": {"name_or_path": str(tiny_bert_dir), "pooling": "mean"},
        "objective": {"name": "simcse_unsup"},
        "data": {"kind": "text", "path": str(texts), "epochs": 3},
        "train": {"batch_size": 8, "lr": 1e-3},
        "eval": {"every_steps": 2, "at_epoch_end": True, "mode": "dev", "metric": "sickr",
                 "data_dir": str(senteval_dir)},
        "checkpoint": {"every_steps": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
        "output_dir": str(tmp_path / "run"),
    }  # fmt: skip
    assert train(raw).steps == 9
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    evals = [r["step"] for r in map(json.loads, lines) if r.get("kind") == "eval"]
    assert evals == [2, 3, 4, 6, 8, 9]

    raw["eval"] = {**raw["eval"], "every_steps": 0, "patience": 2}
    raw.update(output_dir=str(tmp_path / "patience"), train={"batch_size": 8, "lr": 1e-12,
                                                             "max_steps": 30})  # fmt: skip
    result = train(raw)
    assert result.stopped_early and result.steps == 9 and result.best_step == 3

    raw["data"] = {**raw["data"], "scan": False}
    raw["output_dir"] = str(tmp_path / "noscan")
    with pytest.raises(UserError, match="eval.at_epoch_end: the number of batches per epoch"):
        train(raw)


def test_command_line_caps_every_stage_of_a_staged_recipe(monkeypatch):
    """`contrasent train RECIPE --train.max_steps 4` (the README test's cap) reaches every stage
    of a staged recipe through the command line itself, not only through parse_train_config."""
    from contrasent.cli import main as cli
    from contrasent.cli.commands import train as train_command
    from contrasent.train.stages import stage_configs

    seen = []
    monkeypatch.setattr(train_command, "run_train", lambda cfg: seen.append(cfg))
    monkeypatch.setattr(train_command, "check_train", lambda cfg: None)
    recipe = str(Path(__file__).parents[1] / "configs" / "domain-tsdae-nli-sts-cpu.yaml")
    assert cli.main(["train", recipe, "--train.max_steps", "4"]) == 0
    assert [c.train.max_steps for _, c in stage_configs(seen[0])] == [4, 4, 4]
