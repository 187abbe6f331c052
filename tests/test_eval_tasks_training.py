"""Own-data tasks inside training: ``eval.tasks`` evaluated at every evaluation, logged by name,
``eval.metric: NAME.METRIC`` selecting ``best/`` and driving patience; mistakes in the task
files or the metric stop the run before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contrasent.core.errors import UserError
from contrasent.data.registry import DataSpec
from contrasent.train.config import (
    CheckpointConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from contrasent.train.loop import train


def write_beir(folder: Path, pairs: list[tuple[str, str]]) -> Path:
    """Query i = pairs[i][0], its one relevant document = pairs[i][1]."""
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for i, (_, doc) in enumerate(pairs):
            f.write(json.dumps({"_id": f"d{i}", "text": doc}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for i, (query, _) in enumerate(pairs):
            f.write(json.dumps({"_id": f"q{i}", "text": query}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(len(pairs))]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def held_out_pairs(shared: Path, n: int) -> list[tuple[str, str]]:
    """WikiSplit test pairs (training reads the tune split)."""
    lines = (shared / "pairs" / "wiki-split-test.tsv").read_text().splitlines()[:n]
    return [tuple(line.split("\t")[:2]) for line in lines]  # type: ignore[misc]


def config(
    model: Path, shared: Path, out: Path, ev: EvalConfig, steps: int, lr: float = 3e-4
) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(str(model), pooling="mean", max_seq_length=32),
        objective={"name": "pairs", "scale": 20.0},
        data=DataSpec(kind="pairs", path=str(shared / "pairs" / "wiki-split-tune.tsv")),
        train=OptimConfig(batch_size=16, max_steps=steps, lr=lr),
        eval=ev,
        checkpoint=CheckpointConfig(every_steps=0),
        logging=LoggingConfig(log_every=1, tensorboard=False, progress_bar=False),
        output_dir=str(out),
    )


def evals(out: Path) -> list[dict]:
    records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if r["kind"] == "eval"]


def test_best_is_chosen_by_a_task_file_metric(tiny_bert_dir, shared_data, tmp_path) -> None:
    task = write_beir(tmp_path / "ws", held_out_pairs(shared_data, 1000))
    ev = EvalConfig(every_steps=4, at_start=True, tasks=[f"ws=retrieval:{task}"],
                    metric="ws.mrr@10")  # fmt: skip
    result = train(config(tiny_bert_dir, shared_data, tmp_path / "run", ev, steps=16))
    records = evals(tmp_path / "run")
    assert [r["step"] for r in records] == [0, 4, 8, 12, 16]
    values = [r["ws.mrr@10"] for r in records]
    assert all(r["metric"] == r["ws.mrr@10"] for r in records)
    assert records[0]["results"]["tasks"]["ws"]["kind"] == "retrieval"
    assert "STSBenchmark" not in records[0]["results"]["tasks"]  # only what eval.tasks names
    assert values[-1] > values[0]  # the pairs objective learns this task
    first_max = values.index(max(values))
    assert result.best_step == records[first_max]["step"] and result.best_metric == max(values)
    assert result.best_dir is not None and (result.best_dir / "model.safetensors").is_file()


def test_patience_counts_the_task_metric_and_its_default(tiny_bert_dir, shared_data, tmp_path):
    """One document: nDCG@10 is 1.0 at every evaluation, so no evaluation after the first is a
    new best and patience 2 stops the run at step 2. eval.metric left unset: the first task's
    main metric."""
    one = write_beir(tmp_path / "one", held_out_pairs(shared_data, 1))
    ev = EvalConfig(every_steps=1, at_start=True, tasks=f"retrieval:{one}", patience=2)
    cfg = config(tiny_bert_dir, shared_data, tmp_path / "run", ev, steps=10)
    result = train(cfg)
    assert cfg.eval.metric == "one.ndcg@10"
    assert result.steps == 2 and result.stopped_early and result.best_step == 0
    assert [r["metric"] for r in evals(tmp_path / "run")] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("tasks", "metric", "message"),
    [
        ("ws=retrieval:{task}", "ws.nosuch", "a retrieval task has ndcg@10"),
        ("ws=retrieval:{task}", "wz.map@100", r"NAME.METRIC of a file in eval.tasks \(ws\)"),
        ("ws=retrieval:{task},MR", None, "transfer tasks .*MR.* are not run during training"),
        ("retrieval:{task}/nope", None, "no file or folder"),
        ("sts:{bad}", None, r"bad.tsv:3: .*score"),
    ],
)
def test_task_mistakes_stop_before_the_model_loads(
    tasks, metric, message, shared_data, tmp_path
) -> None:
    task = write_beir(tmp_path / "ws", held_out_pairs(shared_data, 3))
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\tlots\n")
    ev = EvalConfig(tasks=tasks.format(task=task, bad=bad), metric=metric)
    cfg = config(tmp_path / "no-such-model", shared_data, tmp_path / "run", ev, steps=2)
    with pytest.raises(UserError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing written, no model loaded


def test_no_labels_at_all_the_held_out_loss_alone(tiny_bert_dir, shared_data, tmp_path) -> None:
    """eval.tasks: [] with data.validation: no SentEval folder needed, best/ by the lowest
    validation_loss (the default metric then)."""
    ev = EvalConfig(every_steps=2, at_start=True, tasks=[], data_dir=str(tmp_path / "none"))
    cfg = config(tiny_bert_dir, shared_data, tmp_path / "run", ev, steps=6, lr=1e-3)
    cfg.data.validation = 64
    result = train(cfg)
    assert cfg.eval.metric == "validation_loss"
    records = evals(tmp_path / "run")
    losses = [r["validation_loss"] for r in records]
    assert [r["metric"] for r in records] == losses and losses[-1] < losses[0]
    assert result.best_metric == min(losses)
    assert set(records[0]["results"]) == {"mode", "validation_loss"}  # no STS was run
