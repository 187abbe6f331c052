"""The worked example of CONTRIBUTING.md runs as written: registered, trained a few steps
(plainly and under the gradient cache), listed in --help, its option errors clear."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from contrasent.core.errors import UserError
from contrasent.objectives import OBJECTIVES, build_objective, register
from contrasent.train.config import TrainConfig
from contrasent.train.loop import train

DOC = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


@pytest.fixture()
def demo():
    text = DOC.read_text()
    section = text[text.index("### Worked example") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "CONTRIBUTING.md", "exec"), namespace)
    cls = namespace["CutoffDemo"]
    register(cls)
    yield cls
    OBJECTIVES.pop(cls.name)


def test_worked_example_trains(demo, tiny_bert_dir, shared_data, tmp_path):
    with pytest.raises(UserError, match="rate must be in"):
        build_objective("cutoff_demo", rate=1.5)
    for cache in (0, 5):
        cfg = TrainConfig.from_dict({
            "model": {"name_or_path": str(tiny_bert_dir)},
            "objective": {"name": "cutoff_demo", "rate": 0.2},
            "data": {"kind": "text", "path": str(shared_data / "corpus" / "wiki1m-head.txt")},
            "train": {"batch_size": 8, "max_steps": 2, "mini_batch_size": cache},
            "eval": {"at_end": False},
            "checkpoint": {"every_steps": 0},
            "logging": {"tensorboard": False, "progress_bar": False},
            "output_dir": str(tmp_path / f"run{cache}"),
        })  # fmt: skip
        result = train(cfg)
        assert result.steps == 2 and result.last_train["contrastive"] > 0
