"""Every recipe in configs/ parses through the CLI parser, validates, and names a real objective.

The CPU recipes must also point at data that exists in ../shared/data (they run here).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from contrasent.cli.main import parse_train_config
from contrasent.core.errors import UserError
from contrasent.objectives import OBJECTIVES, build_objective

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_recipes() -> None:
    names = {p.name for p in RECIPES}
    for required in (
        "simcse-unsup-bert-base.yaml",
        "simcse-sup-bert-base.yaml",
        "pairs-1b.yaml",
        "quickstart-cpu.yaml",
        "tsdae-bert-base.yaml",
        "tsdae-cpu.yaml",
        "declutr-small.yaml",
        "declutr-base.yaml",
        "declutr-cpu.yaml",
        "consert-unsup-bert-base.yaml",
        "consert-unsup-cpu.yaml",
        "consert-joint-cpu.yaml",
        "consert-sup-unsup-cpu.yaml",
    ):
        assert required in names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    from contrasent.train.stages import stage_configs

    for _, cfg in stage_configs(parse_train_config([str(recipe)])):  # each stage of a staged one
        assert cfg.objective_name in OBJECTIVES
        # unknown or ill-typed objective options raise UserError here
        objective = build_objective(cfg.objective_name, **cfg.objective_options)
        for key, value in cfg.objective_options.items():
            got = objective.config_dict().get(key, value)
            if isinstance(value, dict):  # a nested section (objective.matryoshka): its keys
                got = {k: got.get(k) for k in value}
            assert got == value, key
        cfg.data.check()
        # a recipe rerun must never replace an earlier run's models (the user opts in)
        assert not cfg.overwrite_output_dir, f"{recipe.name} overwrites its output folder"
        if recipe.name.endswith("-cpu.yaml"):  # these run here: their data must exist
            for p in [cfg.data.path, cfg.data.data_config, cfg.eval.data_dir]:
                for path in p if isinstance(p, list) else [p]:
                    # runs/...: written by a README command before the recipe (mined pairs)
                    if path and not path.startswith("runs/"):
                        assert (REPO / path).exists(), f"{recipe.name}: {path} missing"


def test_paper_settings() -> None:
    unsup = parse_train_config([str(REPO / "configs/simcse-unsup-bert-base.yaml")])
    assert (unsup.train.batch_size, unsup.train.lr, unsup.data.max_seq_length) == (64, 3e-5, 32)
    assert unsup.model.max_seq_length is None  # SimCSE truncates training only
    assert unsup.objective["temperature"] == 0.05 and unsup.eval.every_steps == 125
    sup = parse_train_config([str(REPO / "configs/simcse-sup-bert-base.yaml")])
    assert (sup.train.batch_size, sup.train.lr, sup.data.epochs) == (512, 5e-5, 3)
    pairs = parse_train_config([str(REPO / "configs/pairs-1b.yaml")])
    assert (pairs.train.batch_size, pairs.train.lr, pairs.train.warmup_steps) == (1024, 2e-5, 500)
    assert pairs.data.max_seq_length == 128 and pairs.objective["scale"] == 20.0


def test_overrides_apply() -> None:
    recipe = str(REPO / "configs/simcse-unsup-cpu.yaml")
    cfg = parse_train_config([recipe, "--train.lr", "1e-4", "--objective.temperature", "0.1"])
    assert cfg.train.lr == 1e-4
    assert cfg.objective["temperature"] == 0.1 and cfg.objective["name"] == "simcse_unsup"


def test_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name_or_path: x}\ntrian: {lr: 1}\n")
    with pytest.raises((UserError, SystemExit)):
        parse_train_config([str(bad)])


def test_unknown_objective_option_is_a_clear_error() -> None:
    recipe = str(REPO / "configs/simcse-unsup-cpu.yaml")
    with pytest.raises(UserError, match="'temprature' .did you mean temperature.."):
        parse_train_config([recipe, "--objective.temprature", "0.1"])


def test_objective_and_data_must_fit() -> None:
    recipe = str(REPO / "configs/simcse-unsup-cpu.yaml")
    with pytest.raises(UserError, match="consumes PairBatch.*yields SentenceBatch.*mixture or nli"):
        parse_train_config([recipe, "--objective.name", "simcse_sup"])
    with pytest.raises(UserError, match="unknown data.kind 'txt'.*did you mean text"):
        parse_train_config([recipe, "--data.kind", "txt"])
    with pytest.raises(UserError, match="option temperature must be a number, got 'hot'"):
        parse_train_config([recipe, "--objective.temperature", "hot"])


def test_help_lists_every_objective_with_its_options(capsys) -> None:
    from contrasent.cli.main import main

    assert main(["train", "--help"]) == 0
    short = capsys.readouterr().out
    assert len(short.splitlines()) < 40 and "--help all" in short and "--objective.help" in short
    assert main(["train", "--help", "all"]) == 0
    text = capsys.readouterr().out
    assert "--train.lr: a number = 3e-05" in text and "--eval.patience" in text
    for name, cls in OBJECTIVES.items():
        assert f"{name}: " in text
        for field in cls.Config.__dataclass_fields__:
            assert f"    {field}: " in text, (name, field)
    assert "temperature: a number = 0.05" in text and "data kinds (data.kind)" in text
    assert main(["train", "--help", "objective"]) == 0
    assert "simcse_sup: Supervised SimCSE" in capsys.readouterr().out
    assert main(["train", "--objective.help", "pairs"]) == 0
    one = capsys.readouterr().out
    assert (
        "symmetric: true or false or one of 'auto' = False" in one and "simcse" not in one.lower()
    )
    assert main(["train", "--objective.help", "simcse"]) == 2
    assert "did you mean simcse_sup" in capsys.readouterr().err
