"""``contrasent compare``: several methods x seeds from one tiny model on a small corpus and a
small own-data retrieval task; killed mid-run and started again (finished runs skipped, the
interrupted one resumed from its checkpoint); the table (mean +- std over seeds, best marked)
equal to a hand computation from the run folders; a method that cannot run is a row with its
reason. Plus the plan (budgets, recipes, overrides) and the command-line mistakes."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from contrasent.core.errors import UserError
from contrasent.train.compare import Budget, ComparePlan, method_config, units

REPO = Path(__file__).resolve().parents[1]


def small_task(shared: Path, folder: Path, n: int = 40) -> Path:
    """The first ``n`` linux-man queries (NAME line -> DESCRIPTION) with their own documents."""
    src = shared / "domain" / "linux-man" / "retrieval"
    queries = [json.loads(x) for x in (src / "queries.jsonl").read_text().splitlines()[:n]]
    docs = {d["_id"]: d for d in map(json.loads, (src / "corpus.jsonl").read_text().splitlines())}
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps(docs[q["_id"][2:]]) + "\n" for q in queries)
    )
    qrels = "".join(f"{q['_id']}\t{q['_id'][2:]}\t1\n" for q in queries)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return folder


def cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "contrasent.cli.main", "compare", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            **kw)  # fmt: skip


def last_eval(run: Path) -> dict:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"][-1]


def test_compare_kill_resume_and_the_table(tiny_bert_dir, shared_data, tmp_path) -> None:
    from contrasent.cli.main import main

    corpus = tmp_path / "corpus.txt"
    lines = (shared_data / "domain" / "linux-man" / "corpus.txt").read_text().splitlines()
    corpus.write_text("\n".join(lines[:300]) + "\n")
    task = small_task(shared_data, tmp_path / "man")
    out = tmp_path / "cmp"
    # TSDAE gets 40 steps (an override wins over the budget): the kill below lands mid-run
    args = ["--model", str(tiny_bert_dir), "--data", str(corpus), "--seeds", "2",
            "--methods", "simcse_unsup,tsdae,consert,declutr", "--budget", "steps=6",
            "--pooling", "mean", "--eval", f"man=retrieval:{task}", "--checkpoint_every", "2",
            "--validation", "32", "--output_dir", str(out), "--progress_bar", "false",
            "--overrides", "{tsdae: {train: {max_steps: 40}}}"]  # fmt: skip
    # 1. kill (SIGKILL: no clean-up at all) as soon as the first TSDAE run has a checkpoint
    proc = cli(*args)
    victim = out / "tsdae" / "seed-1"
    deadline = time.monotonic() + 600
    while not list((victim / "checkpoints").glob("step-*")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = victim / "unit.json"  # written at a checkpoint step, or not yet
    assert not killed.exists() or json.loads(killed.read_text())["status"] != "done"
    simcse = out / "simcse_unsup" / "seed-1" / "unit.json"
    assert json.loads(simcse.read_text())["status"] == "done"
    assert not (simcse.parent / "checkpoints").exists()  # a finished run keeps final/ only
    stamp = simcse.stat().st_mtime_ns
    # 2. start again with the output folder alone (the plan is saved there)
    again = cli("--output_dir", str(out), "--progress_bar", "false")
    log, _ = again.communicate(timeout=900)
    assert again.returncode == 0, log
    assert "simcse_unsup/seed-1: done before, skipped" in log
    assert "base/mean: done before, skipped" in log
    assert f"resumed from {victim / 'checkpoints'}" in log  # the loop's exact resume
    assert simcse.stat().st_mtime_ns == stamp
    victim_outcome = json.loads((victim / "unit.json").read_text())
    assert victim_outcome["status"] == "done" and victim_outcome["steps"] == 40
    # 3. the table: a hand computation from the run folders
    table = json.loads((out / "table.json").read_text())
    rows = {r["method"]: r for r in table["rows"]}
    assert list(rows) == ["base (mean)", "simcse_unsup", "tsdae", "consert", "declutr"]
    assert table["columns"] == ["man.ndcg@10", "validation_loss"]
    steps = {"simcse_unsup": 6, "tsdae": 40, "consert": 6}
    for method, n in steps.items():
        finals = [last_eval(out / method / f"seed-{s}") for s in (1, 2)]
        assert [f["step"] for f in finals] == [n, n]
        values = [f["man.ndcg@10"] for f in finals]
        cell = rows[method]["metrics"]["man.ndcg@10"]
        assert cell["values"] == values and rows[method]["runs"] == 2
        assert cell["mean"] == pytest.approx(statistics.fmean(values))
        assert cell["std"] == pytest.approx(statistics.stdev(values))
        assert rows[method]["steps"] == [n, n]
        assert rows[method]["metrics"]["validation_loss"]["mean"] > 0
    batch = {"simcse_unsup": 32, "tsdae": 8, "consert": 32}
    assert {m: rows[m]["examples"] for m in batch} == {
        m: [steps[m] * b] * 2 for m, b in batch.items()
    }
    base = json.loads((out / "base" / "mean" / "eval.json").read_text())["man.ndcg@10"]
    assert rows["base (mean)"]["metrics"]["man.ndcg@10"]["values"] == [base]
    means = {m: r["metrics"]["man.ndcg@10"]["mean"] for m, r in rows.items() if r["runs"]}
    assert table["best"] == {"man.ndcg@10": max(means, key=means.get)}
    assert rows["tsdae"]["metrics"]["man.ndcg@10"]["values"] != [base, base]  # trained
    # the method that cannot run: a row with its reason, no numbers (seed 2 not even tried)
    declutr = rows["declutr"]
    assert declutr["runs"] == 0 and "no document is long enough" in declutr["note"]
    assert "declutr/seed-2: cannot run (as its first seed)" in log
    # Markdown (printed and written): the best mean bold in its column, one bold per column
    md = (out / "table.md").read_text()
    assert md.count("**") == 2 and f"| **{means[table['best']['man.ndcg@10']]:.4f}" in md
    assert md.strip() in log
    with (out / "table.csv").open() as f:
        by_method = {r["method"]: r for r in csv.DictReader(f)}
    assert float(by_method["tsdae"]["man.ndcg@10_mean"]) == pytest.approx(
        rows["tsdae"]["metrics"]["man.ndcg@10"]["mean"]
    )
    assert "cannot run" in by_method["declutr"]["note"]
    for name in ("bars.png", "curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "simcse_unsup" in (out / "report.html").read_text()
    # 4. --table-only rebuilds the same table from the folders
    (out / "table.md").unlink()
    assert main(["compare", "--output_dir", str(out), "--table-only"]) == 0
    assert (out / "table.md").read_text() == md


def plan(tmp_path: Path, **kw) -> ComparePlan:
    corpus = tmp_path / "c.txt"
    corpus.write_text("a line\n")
    base = dict(model="m", data=str(corpus), methods=["simcse_unsup", "tsdae", "declutr"],
                seeds=[1, 2], budget="examples=1000", tasks=["stsb"],
                output_dir=str(tmp_path / "cmp"))  # fmt: skip
    return ComparePlan(**{**base, **kw})


def test_budgets_recipes_and_overrides(tmp_path) -> None:
    p = plan(tmp_path, overrides={"tsdae": {"train": {"lr": 3e-5, "batch_size": 10}}})
    simcse = method_config(p, "simcse_unsup", 2)
    recipe = yaml.safe_load((REPO / "configs" / "simcse-unsup-cpu.yaml").read_text())
    assert simcse["train"]["max_steps"] == 32  # ceil(1000 / batch 32)
    assert simcse["train"]["lr"] == recipe["train"]["lr"] and simcse["train"]["seed"] == 2
    assert simcse["objective"] == recipe["objective"]
    assert simcse["data"]["path"] == p.data and simcse["data"]["epochs"] is None
    assert simcse["output_dir"] == str(tmp_path / "cmp" / "simcse_unsup" / "seed-2")
    tsdae = method_config(p, "tsdae", 1)
    assert tsdae["train"]["lr"] == 3e-5 and tsdae["train"]["max_steps"] == 100  # 1000 / 10
    declutr = method_config(p, "declutr", 1)
    assert declutr["data"]["kind"] == "documents"
    assert declutr["data"]["options"]["document_format"] == "lines"  # --data: a line each
    docs = method_config(plan(tmp_path, documents=str(tmp_path)), "declutr", 1)
    assert (
        docs["data"]["path"] == str(tmp_path)
        and docs["data"]["options"]["document_format"] == "book"
    )
    assert method_config(plan(tmp_path, budget="steps=7"), "tsdae", 1)["train"]["max_steps"] == 7
    assert method_config(plan(tmp_path, max_steps=4), "tsdae", 1)["train"]["max_steps"] == 4
    names = [u.name for u in units(p)]
    # base rows: one per pooling the recipes use (SimCSE / TSDAE: [CLS], DeCLUTR: mean)
    assert names[:2] == ["base/cls_before_pooler", "base/mean"] and len(names) == 2 + 3 * 2
    assert Budget.parse("minutes=1.5").steps(32, 300) == 300
    for bad in ("steps", "steps=0", "epochs=3", "steps=2.5", "examples=-1"):
        with pytest.raises(UserError, match="--budget"):
            Budget.parse(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "simcse,tsdae"], "unknown method 'simcse'.*simcse_unsup"),
        (["--budget", "epochs=2"], "--budget 'epochs=2': use steps=N"),
        (["--eval", ""], "--eval is required"),
        (["--data", "nope.txt"], "--data nope.txt: no such file"),
        (["--overrides", "{declutr: {train: {lr: 1}}}"], "'declutr', not one of --methods"),
        (["--eval", "retrieval:nowhere"], "nowhere"),
    ],
)
def test_mistakes_are_one_line(args, message, tmp_path, capsys) -> None:
    import re

    from contrasent.cli.main import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("a line\n")
    base = {"--model": "m", "--data": str(corpus), "--methods": "simcse_unsup,tsdae",
            "--eval": "stsb", "--output_dir": str(tmp_path / "cmp")}  # fmt: skip
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert main(["compare", *[x for kv in base.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "cmp").exists()


def test_yaml_compare_section_lists_units_and_guards_the_folder(tmp_path, capsys) -> None:
    from contrasent.cli.main import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("a line\n")
    recipe = tmp_path / "cmp.yaml"
    recipe.write_text(yaml.safe_dump({"compare": {
        "model": "m", "data": str(corpus), "methods": ["simcse_unsup", "consert"], "seeds": [7],
        "budget": "steps=5", "eval": ["stsb"], "pooling": "mean",
        "output_dir": str(tmp_path / "cmp")}}))  # fmt: skip
    assert main(["compare", str(recipe), "--list_units"]) == 0
    listed = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert listed == ["base/mean", "simcse_unsup/seed-7", "consert/seed-7"]
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["seeds"] == [7] and saved["budget"] == "steps=5"
    # the same folder with another budget: refused (its runs belong to the first one)
    assert main(["compare", str(recipe), "--budget", "steps=6", "--list_units"]) == 2
    assert "holds a comparison with another budget" in capsys.readouterr().err


@pytest.mark.slow  # three CLI processes: minutes on a busy 2-core machine
def test_parallel_runs_each_unit_in_its_own_process(tiny_bert_dir, shared_data, tmp_path) -> None:
    """--parallel 2: the base row and the run as two `compare --run I` processes, each with its
    log; the parent then writes the table from their folders."""
    corpus = tmp_path / "corpus.txt"
    lines = (shared_data / "domain" / "linux-man" / "corpus.txt").read_text().splitlines()
    corpus.write_text("\n".join(lines[:100]) + "\n")
    task = small_task(shared_data, tmp_path / "man", n=20)
    out = tmp_path / "cmp"
    proc = cli("--model", str(tiny_bert_dir), "--data", str(corpus), "--methods", "simcse_unsup",
               "--seeds", "1", "--budget", "steps=2", "--pooling", "mean",
               "--eval", f"man=retrieval:{task}", "--output_dir", str(out), "--parallel", "2")  # fmt: skip
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    assert "base/mean" in (out / "logs" / "0.log").read_text()
    assert "step 2: man.ndcg@10=" in (out / "logs" / "1.log").read_text()
    rows = {r["method"]: r for r in json.loads((out / "table.json").read_text())["rows"]}
    assert rows["simcse_unsup"]["runs"] == 1 and rows["simcse_unsup"]["steps"] == [2]
    assert rows["base (mean)"]["runs"] == 1


def test_a_minutes_budget_stops_the_run_at_its_time(tiny_bert_dir, shared_data, tmp_path) -> None:
    """minutes=N: each run is stopped by the clock (here after its first step: 0.06 s), far
    before the recipe's 300 steps, then evaluated and recorded like any run."""
    from contrasent.train.compare import run_unit

    corpus = tmp_path / "corpus.txt"
    lines = (shared_data / "domain" / "linux-man" / "corpus.txt").read_text().splitlines()
    corpus.write_text("\n".join(lines[:100]) + "\n")
    task = small_task(shared_data, tmp_path / "man", n=10)
    p = ComparePlan(model=str(tiny_bert_dir), data=str(corpus), methods=["simcse_unsup"],
                    seeds=[1], budget="minutes=0.001", tasks=[f"man=retrieval:{task}"],
                    output_dir=str(tmp_path / "cmp"), pooling="mean")  # fmt: skip
    unit = units(p)[1]
    assert method_config(p, "simcse_unsup", 1)["train"]["max_steps"] == 300  # the recipe's
    outcome = run_unit(p, unit, progress_bar=False)
    assert outcome["status"] == "done" and outcome["steps"] == 1 and outcome["examples"] == 32
    assert last_eval(unit.folder)["step"] == 1


def test_a_second_compare_into_a_running_ones_folder_is_refused(tmp_path, capsys) -> None:
    """One folder, one comparison: while another process holds the folder's lock (a running
    `compare`), a second one stops at once with one line naming it, and runs nothing."""
    from contrasent.cli.main import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("a line\n")
    out = tmp_path / "cmp"
    hold = (
        "import sys, time\nfrom contrasent.core.runlock import RunLock\n"
        "with RunLock(sys.argv[1], 'contrasent compare'):\n"
        "    print('got it', flush=True)\n    time.sleep(60)\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "got it"
        argv = ["compare", "--model", "m", "--data", str(corpus), "--methods", "simcse_unsup",
                "--eval", "stsb", "--budget", "steps=2", "--output_dir", str(out)]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by contrasent compare (pid {holder.pid} " in err[0]
        assert not (out / "base").exists()  # nothing ran
    finally:
        holder.kill()
        holder.wait(timeout=60)
