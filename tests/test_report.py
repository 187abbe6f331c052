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
from contrasent.report import build_report, checkpoint_trajectory

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


def test_trajectory_from_checkpoints(
    tiny_bert_dir: Path, senteval_dir: Path, tmp_path: Path
) -> None:
    from contrasent.data.senteval import read_stsb
    from contrasent.eval.diagnostics import alignment_uniformity
    from contrasent.eval.sts import embed_unique
    from contrasent.model.encoder import Encoder

    # a small STS-B dev (the first 120 pairs) keeps the six encodings below fast
    data = tmp_path / "data" / "STS" / "STSBenchmark"
    data.mkdir(parents=True)
    real = (senteval_dir / "STS" / "STSBenchmark" / "sts-dev.csv").read_text().splitlines()
    (data / "sts-dev.csv").write_text("\n".join(real[:120]) + "\n")
    senteval_dir = tmp_path / "data"
    run = make_run(tmp_path / "run", with_diagnostics=False)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"eval": {"data_dir": str(senteval_dir)}}))
    enc = Encoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    enc.save(run / "final")
    expected = []
    for step, scale in ((5, 1.0), (15, 0.5)):
        torch.manual_seed(step)
        with torch.no_grad():
            for p in enc.parameters():
                p.add_(scale * 0.02 * torch.randn_like(p))
        folder = run / "checkpoints" / f"step-{step:08d}"
        folder.mkdir(parents=True)
        state = {f"encoder.{k}": v.clone() for k, v in enc.state_dict().items()}
        state["head.weight"] = torch.zeros(2)  # objective heads are ignored
        torch.save(state, folder / "trainable.pt")
        pairs = read_stsb(senteval_dir, "dev")
        index, emb = embed_unique(lambda t: enc.encode(t), pairs.s1 + pairs.s2, 128)
        a, b = emb[[index[s] for s in pairs.s1]], emb[[index[s] for s in pairs.s2]]
        d = alignment_uniformity(a, b, pairs.gold, emb)
        expected.append((step, d["alignment"], d["uniformity"]))
    points = checkpoint_trajectory(run, str(senteval_dir))
    assert [p[0] for p in points] == [5, 15]
    np.testing.assert_allclose([p[1:] for p in points], [e[1:] for e in expected], rtol=1e-5)
    build_report(run)  # metrics.jsonl has no alignment: falls back to the checkpoints
    assert (run / "report" / "alignment-uniformity.png").is_file()


def test_report_options_parse() -> None:
    from contrasent.cli.main import COMMANDS
    from contrasent.cli.parse import parse_args

    cmd = COMMANDS["report"]
    for argv in (["runs/x", "--checkpoints"], ["--checkpoints", "true", "runs/x"]):
        args, _ = parse_args(cmd.options(), argv, positional=cmd.positional)
        assert (args.run_dir, args.checkpoints) == ("runs/x", True)
