"""`contrasent report RUN_DIR`: report.html from a run folder's files, trajectories both ways."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contrasent.cli.main import main
from contrasent.core.errors import UserError
from contrasent.eval.diagnostics import similarity_distribution
from contrasent.report import affordable, build_report, checkpoint_trajectory, sample_pairs, spread

PNG = b"\x89PNG\r\n\x1a\n"


def eval_result(stsb: float, align: float, unif: float) -> dict:
    gold = np.linspace(0, 5, 50)
    return {
        "mode": "dev",
        "tasks": {
            "STSBenchmark": {"spearman": {"dev": stsb}},
            "SICKRelatedness": {"spearman": {"dev": 70.0}},
        },
        "avg": (stsb + 70.0) / 2,
        "diagnostics": {
            "split": "dev",
            "alignment": align,
            "uniformity": unif,
            "similarity": similarity_distribution(gold, gold / 5),
        },
    }


def make_run(folder: Path, with_diagnostics: bool = True) -> Path:
    folder.mkdir(parents=True)
    config = {"model": {"name_or_path": "bert-base-uncased"}, "objective": {"name": "simcse_unsup"}}
    (folder / "config.json").write_text(json.dumps(config))
    lines = [{"step": s, "kind": "train", "loss": 2.0 / s, "lr": 3e-5} for s in range(1, 21)]
    for step, stsb, a, u in (
        (0, 61.25, 0.61, -1.1),
        (10, 74.5, 0.3, -2.0),
        (20, 79.87, 0.27, -2.4),
    ):
        res = eval_result(stsb, a, u)
        rec = {"step": step, "kind": "eval", "metric": stsb, "best": stsb, "best_step": step,
               "stsb": stsb, "sickr": 70.0, "avg": res["avg"], "results": res}  # fmt: skip
        if with_diagnostics:
            rec |= {"alignment": a, "uniformity": u}
        lines.append(rec)
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (folder / "metrics.jsonl").write_text(text + '{"step": 21, "kind": "tr')  # killed mid-line
    return folder


def test_report_from_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / "eval").mkdir()
    transfer = {"mode": "fasttest", "tasks": {"MR": {"acc": 77.31, "devacc": 77.0}}, "avg": 77.31}
    (run / "eval" / "final.json").write_text(json.dumps({"mode": "fasttest", "transfer": transfer}))
    page = build_report(run)
    assert page == run / "report" / "report.html"
    text = page.read_text()
    for snippet in ("61.25", "79.87", "77.31", "before (step 0)", "after (step 20)", "simcse_unsup",
                    "alignment 0.2700", "data:image/png;base64,"):  # fmt: skip
        assert snippet in text, snippet
    pngs = sorted(p.name for p in (run / "report").glob("*.png"))
    assert pngs == ["alignment-uniformity.png", "curves.png", "similarity-distribution.png"]
    assert all((run / "report" / p).read_bytes()[:8] == PNG for p in pngs)
    assert text.count("<img") == 3


def test_report_cli_and_errors(capsys, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a training run folder"):
        build_report(tmp_path / "empty")


def checkpoint_run(tiny_bert_dir: Path, senteval_dir: Path, tmp_path: Path):
    """A run with no logged alignment, final/ and two checkpoints (steps 5, 15) of a tiny BERT,
    its recipe pointing at a small STS-B dev (the first 60 pairs keep the encodings fast).
    Returns the run, that data folder and the encoder states by step."""
    from contrasent.model.encoder import Encoder

    data = tmp_path / "data" / "STS" / "STSBenchmark"
    data.mkdir(parents=True)
    real = (senteval_dir / "STS" / "STSBenchmark" / "sts-dev.csv").read_text().splitlines()
    (data / "sts-dev.csv").write_text("\n".join(real[:60]) + "\n")
    run = make_run(tmp_path / "run", with_diagnostics=False)
    config = json.loads((run / "config.json").read_text())
    config |= {"eval": {"data_dir": str(tmp_path / "data")}}
    (run / "config.json").write_text(json.dumps(config))
    enc = Encoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    enc.save(run / "final")
    states = {}
    for step, scale in ((5, 1.0), (15, 0.5)):
        torch.manual_seed(step)
        with torch.no_grad():
            for p in enc.parameters():
                p.add_(scale * 0.02 * torch.randn_like(p))
        folder = run / "checkpoints" / f"step-{step:08d}"
        folder.mkdir(parents=True)
        states[step] = {k: v.clone() for k, v in enc.state_dict().items()}
        state = {f"encoder.{k}": v for k, v in states[step].items()}
        state["head.weight"] = torch.zeros(2)  # objective heads are ignored
        torch.save(state, folder / "trainable.pt")
    return run, tmp_path / "data", states


def hand_point(tiny_bert_dir: Path, state: dict, s1: list, s2: list, gold) -> tuple:
    """Alignment and uniformity of the pairs, computed without checkpoint_trajectory."""
    from contrasent.eval.diagnostics import alignment_uniformity
    from contrasent.model.encoder import Encoder

    enc = Encoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    enc.load_state_dict(state)
    uniq = sorted(set(s1 + s2))
    emb = enc.encode(uniq).astype(np.float64)
    pos = {s: i for i, s in enumerate(uniq)}
    d = alignment_uniformity(emb[[pos[s] for s in s1]], emb[[pos[s] for s in s2]], gold, emb)
    return d["alignment"], d["uniformity"]


def test_trajectory_from_checkpoints(
    tiny_bert_dir: Path, senteval_dir: Path, tmp_path: Path
) -> None:
    from contrasent.data.senteval import read_stsb

    run, data, states = checkpoint_run(tiny_bert_dir, senteval_dir, tmp_path)
    pairs = read_stsb(data, "dev")
    traj = checkpoint_trajectory(run, str(data))
    assert [p[0] for p in traj.points] == [5, 15]
    expected = [
        hand_point(tiny_bert_dir, states[s], pairs.s1, pairs.s2, pairs.gold) for s in (5, 15)
    ]
    np.testing.assert_allclose([p[1:] for p in traj.points], expected, rtol=1e-5)
    assert traj.note == "60 of 60 STS-B dev pairs, a fixed sample, 2 of 2 checkpoints"
    build_report(run)  # metrics.jsonl has no alignment: falls back to the checkpoints
    assert (run / "report" / "alignment-uniformity.png").is_file()
    assert "one point per checkpoint: 60 of 60" in (run / "report" / "report.html").read_text()


def test_trajectory_limits_sample_checkpoints_and_budget(
    tiny_bert_dir: Path, senteval_dir: Path, tmp_path: Path
) -> None:
    """The report's trajectory is bounded: a fixed sample of the pairs, the last of the chosen
    checkpoints, and a skip with a note when the estimated time is over the budget."""
    from contrasent.data.senteval import read_stsb
    from contrasent.report import TrajectoryLimits

    run, data, states = checkpoint_run(tiny_bert_dir, senteval_dir, tmp_path)
    pairs = read_stsb(data, "dev")
    traj = checkpoint_trajectory(run, str(data), TrajectoryLimits(pairs=40, checkpoints=1))
    keep = sample_pairs(60, 40)
    s1, s2 = [pairs.s1[i] for i in keep], [pairs.s2[i] for i in keep]
    assert [p[0] for p in traj.points] == [15]  # one checkpoint: the end of the run
    expected = hand_point(tiny_bert_dir, states[15], s1, s2, pairs.gold[keep])
    np.testing.assert_allclose(traj.points[0][1:], expected, rtol=1e-5)
    assert traj.note == "40 of 60 STS-B dev pairs, a fixed sample, 1 of 2 checkpoints"
    slow = TrajectoryLimits(budget_s=1e-6)  # no checkpoint can be embedded in a microsecond
    traj = checkpoint_trajectory(run, str(data), slow)
    assert traj.points == [] and traj.note.startswith("trajectory skipped: 2 checkpoints x ~")
    assert "over the 1e-06 s budget" in traj.note
    page = build_report(run, limits=slow).read_text()
    assert "trajectory skipped: 2 checkpoints" in page
    assert not (run / "report" / "alignment-uniformity.png").exists()
    assert main(["report", str(run), "--trajectory_pairs", "-1"]) == 2  # one line, no traceback


def test_trajectory_sample_spread_and_affordable() -> None:
    keep = sample_pairs(1500, 256)
    assert len(keep) == len(set(keep)) == 256 and list(keep) == sorted(keep)
    assert keep.max() < 1500 and np.array_equal(keep, sample_pairs(1500, 256))  # fixed
    assert list(sample_pairs(10, 0)) == list(sample_pairs(10, 50)) == list(range(10))
    assert spread(40, 6) == [0, 8, 16, 23, 31, 39]  # round(i * 39 / 5)
    assert spread(3, 6) == [0, 1, 2] and spread(5, 0) == [0, 1, 2, 3, 4] and spread(5, 1) == [4]
    # 6 wanted, 10 s each, 60 s budget, 5 s spent on loading and the probe: 5 fit
    assert affordable(6, 10.0, 60.0, 5.0) == 5
    assert affordable(6, 10.0, 0.0, 5.0) == 6  # no limit
    assert affordable(6, 40.0, 60.0, 5.0) == 0  # one point is no trajectory: skipped
    assert affordable(1, 40.0, 60.0, 5.0) == 1  # ... unless the run has one checkpoint
    assert affordable(1, 70.0, 60.0, 5.0) == 0


def test_report_options_parse() -> None:
    from contrasent.cli.main import COMMANDS
    from contrasent.cli.parse import parse_args

    cmd = COMMANDS["report"]
    for argv in (["runs/x", "--checkpoints"], ["--checkpoints", "true", "runs/x"]):
        args, _ = parse_args(cmd.options(), argv, positional=cmd.positional)
        assert (args.run_dir, args.checkpoints) == ("runs/x", True)
    args, _ = parse_args(cmd.options(), ["runs/x"], positional=cmd.positional)
    limits = (args.trajectory_pairs, args.trajectory_checkpoints, args.trajectory_budget)
    assert limits == (256, 6, 60.0)
    argv = ["runs/x", "--trajectory_budget", "0", "--trajectory_pairs", "64"]
    args, _ = parse_args(cmd.options(), argv, positional=cmd.positional)
    assert (args.trajectory_budget, args.trajectory_pairs) == (0.0, 64)
