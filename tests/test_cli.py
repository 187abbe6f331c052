"""CLI: user mistakes give one clear line and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contrasent.cli.main import main


def run_main(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # jsonargparse rejects bad option values this way
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_model_path(capsys, tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "eval", "--model", str(tmp_path / "nope"))
    assert code == 2
    assert "does not exist" in err and str(tmp_path / "nope") in err
    assert "Traceback" not in err


def test_unknown_pooling(capsys, tiny_bert_dir: Path) -> None:
    code, _, err = run_main(capsys, "eval", "--model", str(tiny_bert_dir), "--pooling", "bogus")
    assert code == 2 and "bogus" in err and "Traceback" not in err


def test_missing_sts_data(capsys, tiny_bert_dir: Path, tmp_path: Path) -> None:
    code, _, err = run_main(
        capsys, "eval", "--model", str(tiny_bert_dir), "--data-dir", str(tmp_path / "none")
    )
    assert code == 2 and str(tmp_path / "none") in err


def test_missing_data_fails_before_the_model_loads(capsys, tmp_path: Path, monkeypatch) -> None:
    from contrasent.data import senteval

    monkeypatch.delenv("CONTRASENT_DATA")
    monkeypatch.setattr(senteval, "DEFAULT_DIRS", (tmp_path / "no-shared",))  # not ../shared either
    code, _, err = run_main(capsys, "eval", "--model", str(tmp_path / "no-model"), "--tasks", "MR")
    assert code == 2 and "no evaluation data directory" in err  # not "model does not exist"


def test_embed_missing_input(capsys, tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.npy"
    code, _, err = run_main(
        capsys, "embed", "--model", str(tiny_bert_dir), "--input", str(tmp_path / "in.txt"),
        "--output", str(out),
    )  # fmt: skip
    assert code == 2 and "in.txt" in err and not out.exists()


def test_embed_bad_utf8_names_line_and_leaves_no_output(
    capsys, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"fine\n\nalso fine\nbad \xff byte\n")
    out = tmp_path / "e.npy"
    args = ["embed", "--model", str(tiny_bert_dir), "--input", str(src), "--output", str(out)]
    code, _, err = run_main(capsys, *args)
    assert code == 2 and "in.txt:4" in err and not out.exists()
    assert list(tmp_path.iterdir()) == [src]  # no temp file left behind
    code, stdout, _ = run_main(capsys, *args, "--errors", "replace")
    assert code == 0 and "replaced_lines=1" in stdout
    emb = np.load(out)
    assert emb.shape[0] == 4  # the empty line keeps its row


def test_embed_matches_encode(capsys, tiny_bert_dir: Path, tmp_path: Path) -> None:
    from contrasent.model.encoder import Encoder

    lines = ["a cat sat", "", "émigré naïve café", "x " * 300]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "e.npy"
    args = ["--model", str(tiny_bert_dir), "--input", str(src), "--output", str(out)]
    code, _, _ = run_main(capsys, "embed", *args, "--batch_size", "3")
    assert code == 0
    expected = Encoder.from_pretrained(str(tiny_bert_dir), device="cpu").encode(lines)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_train_missing_recipe(capsys, tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err


def test_train_bad_data_path(capsys, tiny_bert_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{name_or_path: {tiny_bert_dir}}}\n"
        "objective: {name: simcse_unsup}\n"
        f"data: {{kind: text, path: {tmp_path / 'corpus.txt'}}}\n"
        f"output_dir: {tmp_path / 'run'}\n"
        "eval: {at_end: false}\n"
    )
    code, _, err = run_main(capsys, "train", str(recipe))
    assert code == 2 and "corpus.txt" in err and "Traceback" not in err


def test_train_prints_diagnostics_and_writes_report_and_card(
    capsys, tiny_bert_dir: Path, shared_data: Path, senteval_dir: Path, tmp_path: Path
) -> None:
    from contrasent.eval.classifier import torch_threads

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{name_or_path: {tiny_bert_dir}}}\n"
        "objective: {name: simcse_unsup}\n"
        f"data: {{kind: text, path: {shared_data / 'corpus' / 'wiki1m-head.txt'}}}\n"
        "train: {batch_size: 8, max_steps: 2}\n"
        f"eval: {{at_start: true, at_end: true, mode: dev, data_dir: {senteval_dir}}}\n"
        "logging: {progress_bar: false, tensorboard: false}\n"
        f"output_dir: {tmp_path / 'run'}\n"
    )
    with torch_threads(1):
        code, out, _ = run_main(capsys, "train", str(recipe))
    assert code == 0
    assert "before (step 0): alignment" in out and "after (step 2): alignment" in out
    report = tmp_path / "run" / "report" / "report.html"
    assert f"report: {report}" in out and "alignment-uniformity.png" in str(
        sorted(p.name for p in report.parent.iterdir())
    )
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "SimCSE (unsupervised)" in card and "**Steps:** 2" in card


def test_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "contrasent.cli", "eval", "--model", str(tmp_path / "nope")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0  # one line


# ----------------------------------------------------------------------------- eval: task sets


def test_eval_task_sets_parse() -> None:
    from contrasent.cli.main import COMMANDS
    from contrasent.cli.parse import parse_args
    from contrasent.eval.suite import split_tasks

    argv = ["--model", "m", "--tasks", "transfer", "--mode", "fasttest"]
    args, _ = parse_args(COMMANDS["eval"].options(), argv)
    assert (args.tasks, args.mode) == ("transfer", "fasttest")
    assert split_tasks("transfer") == (None, ["transfer"])
    assert split_tasks("full") == (["sts"], ["transfer"])
    assert split_tasks(None) == (["sts"], None)
    assert split_tasks("MR, stsb,sst,sick-e") == (["stsb"], ["MR", "sst", "sick-e"])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--tasks", "MR,bogus"], "unknown task 'bogus'"),
        (["--tasks", "STS12", "--mode", "dev"], "STS12 has no dev split"),
    ],
)
def test_eval_bad_tasks_one_line(capsys, tmp_path: Path, argv, needle) -> None:
    code, _, err = run_main(capsys, "eval", "--model", str(tmp_path / "never-loaded"), *argv)
    assert code == 2 and needle in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_eval_bad_mode_rejected(capsys, tiny_bert_dir: Path) -> None:
    code, _, err = run_main(capsys, "eval", "--model", str(tiny_bert_dir), "--mode", "quick")
    assert code == 2 and "quick" in err


def test_eval_sts_and_transfer_json_and_plots(capsys, tiny_bert_dir: Path, tmp_path: Path) -> None:
    import json

    from contrasent.eval.classifier import torch_threads

    out, plots = tmp_path / "r.json", tmp_path / "plots"
    with torch_threads(1):  # a tiny model: one thread is fastest, and immune to a busy machine
        code, stdout, _ = run_main(
            capsys, "eval", "--model", str(tiny_bert_dir), "--tasks", "stsb,TREC", "--mode",
            "fasttest", "--output", str(out), "--plots", str(plots),
        )  # fmt: skip
    assert code == 0
    res = json.loads(out.read_text())
    trec = res["transfer"]["tasks"]["TREC"]
    assert res["mode"] == "fasttest" and res["sts_mode"] == "test"
    assert res["tasks"]["STSBenchmark"]["spearman"]["test"] is not None
    assert trec["kfold"] == 5 and res["transfer"]["classifier"]["optim"] == "rmsprop"
    assert {"acc", "devacc", "grid", "l2", "time_s", "ndev", "ntest"} <= set(trec)
    assert res["diagnostics"]["n_positive_pairs"] > 0
    assert "Transfer (fasttest" in stdout and f"{trec['acc']:.2f}" in stdout
    assert "alignment" in stdout and "uniformity" in stdout
    assert sorted(p.name for p in plots.iterdir()) == [
        "similarity-distribution.png",
        "sts-STSBenchmark.png",
    ]
