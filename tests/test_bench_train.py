"""bench/train.py's method list: a model that cannot be TSDAE's decoder leaves that row out, said
in one line, instead of ending the run (bench/gpu.sh runs every method on all-mpnet-base-v2)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import transformers

REPO = Path(__file__).resolve().parents[1]


def _bench_train():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tsdae_is_left_out_for_mpnet_and_kept_for_bert(tmp_path, capsys):
    bench = _bench_train()
    every = ["simcse", "simcse_sup", "pairs", "tsdae"]
    transformers.MPNetConfig().save_pretrained(tmp_path / "mpnet")
    transformers.BertConfig().save_pretrained(tmp_path / "bert")

    assert bench.runnable_methods(every, str(tmp_path / "mpnet")) == every[:3]
    line = capsys.readouterr().out.strip()
    assert line.startswith("tsdae left out: TSDAE: model") and "mpnet" in line
    assert bench.runnable_methods(every, str(tmp_path / "bert")) == every
    assert bench.runnable_methods(every[:1], str(tmp_path / "mpnet")) == every[:1]
    assert capsys.readouterr().out == ""
