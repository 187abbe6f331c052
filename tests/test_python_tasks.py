"""Own-data evaluation tasks given from Python (rows, columns, a ``datasets.Dataset``): the
same metrics as the same task read from its file in ../shared/data/tasks, the file readers'
checks as one error naming the task and the row, and inside ``contrasent.train(...,
eval_tasks=...)``: the recorded config carries the data's fingerprint, resume continues with the
same data and a run without it is one clear error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import contrasent
from contrasent.core.errors import UserError
from contrasent.eval import evaluate_sts_file
from contrasent.eval.tasks import evaluate_tasks, memory, python_task_specs
from stand_ins import hashed_encode


def _table(path: Path) -> list[list[str]]:
    """Data rows of a tab-separated task file (header dropped), read by the csv module."""
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _metrics(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.endswith("seconds")}


@pytest.fixture
def one_thread():
    """k-means' OpenMP threads spin-wait on a busy shared CPU: one thread, the same clusters."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def test_python_tasks_score_like_their_files(shared_data: Path, tmp_path: Path, one_thread):
    """Each kind in a different Python form; every metric and count equal to the file's
    (reranking: the file's first 300 queries, to keep the test to seconds)."""
    import datasets

    t = shared_data / "tasks"
    sts = [(a, b, float(s)) for a, b, s in _table(t / "sick-sts.tsv")]  # tuples
    pairs = [  # dicts
        {"sentence1": a, "sentence2": b, "label": int(y)}
        for a, b, y in _table(t / "mrpc-pairs.tsv")
    ]
    rows = _table(t / "trec-clusters.tsv")
    clusters = {"text": [r[0] for r in rows], "label": [r[1] for r in rows]}  # columns
    lines = (t / "snli-reranking.jsonl").read_text(encoding="utf-8").splitlines(True)[:300]
    (tmp_path / "rerank.jsonl").write_text("".join(lines), encoding="utf-8")
    reranking = datasets.Dataset.from_list([json.loads(x) for x in lines])  # a Dataset
    r = t / "sick-graded-retrieval"
    retrieval = {  # BEIR's rows (corpus, qrels) and sentence-transformers' id -> text (queries)
        "queries": {o["_id"]: o["text"] for o in _jsonl(r / "queries.jsonl")},
        "corpus": _jsonl(r / "corpus.jsonl"),
        "qrels": [
            {"query-id": q, "corpus-id": d, "score": int(s)}
            for q, d, s in _table(r / "qrels" / "test.tsv")
        ],
    }
    in_memory = evaluate_tasks(
        {
            "sts": ("sts", sts),
            "pairs": ("pairs", pairs),
            "clusters": ("clustering", clusters),
            "rerank": ("reranking", reranking),
            "ret": ("retrieval", retrieval),
        },
        hashed_encode,
    )
    files = evaluate_tasks(
        [
            f"sts={t / 'sick-sts.tsv'}",
            f"pairs={t / 'mrpc-pairs.tsv'}",
            f"clusters={t / 'trec-clusters.tsv'}",
            f"rerank={tmp_path / 'rerank.jsonl'}",
            f"ret={r}",
        ],
        hashed_encode,
    )
    assert in_memory.keys() == files.keys()
    for name in files:
        assert _metrics(in_memory[name]) == _metrics(files[name]), name
    assert files["ret"]["replaced_judgments"] == 4  # the file judges 4 pairs twice: counted too
    assert 0 < files["sts"]["spearman"] < 100 and files["pairs"]["n_pairs"] == len(pairs)


def test_forms_of_one_task_are_one_task(shared_data: Path) -> None:
    """Tuples, dicts, columns and a Dataset of the same rows: one fingerprint, one result; the
    per-kind function takes rows directly."""
    import datasets

    rows = [(a, b, float(s)) for a, b, s in _table(shared_data / "tasks" / "sick-sts.tsv")[:300]]
    columns = {k: [r[i] for r in rows] for i, k in enumerate(("sentence1", "sentence2", "score"))}
    forms = [
        rows,
        [dict(zip(columns, r, strict=True)) for r in rows],
        columns,
        datasets.Dataset.from_dict(columns),
        datasets.Dataset.from_dict(columns).to_iterable_dataset(),
        (r for r in rows),  # any iterable of rows
    ]
    specs = {python_task_specs({"s": ("sts", form)})[0] for form in forms}
    assert len(specs) == 1 and specs.pop().startswith("s=sts:memory:")
    other = python_task_specs({"s": ("sts", rows[:-1])})[0]
    assert other.startswith("s=sts:memory:") and other not in python_task_specs(
        {"s": ("sts", rows)}
    )
    # MTEB's integer cluster labels (numpy ones too) are the same task as their text
    labels = np.arange(6) % 2
    ints = python_task_specs({"c": ("clustering", {"text": list("abcdef"), "label": labels})})
    assert ints == python_task_specs(
        {"c": ("clustering", [(t, str(y)) for t, y in zip("abcdef", labels, strict=True)])}
    )
    direct = evaluate_sts_file(hashed_encode, rows)
    via = _metrics(evaluate_tasks({"s": ("sts", columns)}, hashed_encode)["s"])
    assert direct == {k: v for k, v in via.items() if k != "kind"}
    assert direct["n_pairs"] == 300


@pytest.mark.parametrize(
    ("kind", "data", "message"),
    [
        (
            "sts",
            [("a", "b", 1.0), ("c", "d", "lots")],
            r"eval task 'x', row 2: score 'lots' is not",
        ),
        ("sts", [("a", "b", 1.0), ("c", "d")], r"'x', row 2: expected 3 values"),
        ("sts", [{"sentence1": "a", "text": "b"}], r"row 1: no 'sentence2'; its keys are"),
        ("sts", {"sentence1": ["a"], "sentence2": ["b", "c"], "score": [1, 2]}, "lengths"),
        ("sts", [("a", 5, 1.0)], r"row 1: sentence2 must be a string"),
        ("sts", [("", "b", 1.0)], r"eval task 'x': no scored pairs .*1 skipped"),
        ("pairs", [("a", "b", 1), ("c", "d", 2)], r"row 2: label 2 must be 0 or 1"),
        ("pairs", [("a", "b", 1), ("c", "d", True)], r"every pair is labelled 1"),
        ("clustering", [("a", "L"), ("b", " ")], r"row 2: empty label"),
        ("clustering", [("a", 1), ("b", 1)], r"every text has the label '1'"),
        ("reranking", [{"query": "q", "positive": [1], "negative": []}], r"row 1: 'positive' must"),
        ("retrieval", {"queries": {"q": "x"}, "corpus": {"d": "y"}}, r"no 'relevant_docs'"),
        (
            "retrieval",
            {"queries": {"q": "x"}, "corpus": {"d": "y"}, "relevant_docs": {"q": ["e"]}},
            r"'x' \(relevant_docs\), row 1: unknown document id 'e'",
        ),
        (
            "retrieval",
            {
                "queries": [{"_id": 1, "text": "x"}, {"_id": "1", "text": "z"}],
                "corpus": {"d": "y"},
                "qrels": {},
            },
            r"'x' \(queries\), row 2: _id '1' again",
        ),
        ("nope", [], r"unknown task kind 'nope'"),
    ],
)
def test_mistakes_are_one_error_naming_task_and_row(kind, data, message) -> None:
    with pytest.raises(UserError, match=message):
        python_task_specs({"x": (kind, data)})


def test_spec_forms_and_names(tmp_path: Path, shared_data: Path) -> None:
    sts_file = shared_data / "tasks" / "sick-sts.tsv"
    mixed = python_task_specs(["stsb", {"mine": ("sts", [("a", "b", 1.0), ("c", "d", 2.0)])}])
    assert mixed[0] == "stsb" and mixed[1].startswith("mine=sts:memory:")
    assert python_task_specs({"f": sts_file}) == [f"f={sts_file}"]
    with pytest.raises(UserError, match="a word without"):
        python_task_specs({"a,b": ("sts", [])})
    with pytest.raises(UserError, match=r"expected \(KIND, data\)"):
        python_task_specs({"a": [("x", "y", 1.0)]})


# ----------------------------------------------------------------------------- training
def _pairs(shared: Path, name: str, n: int) -> list[tuple[str, str]]:
    lines = (shared / "pairs" / name).read_text(encoding="utf-8").splitlines()[:n]
    return [tuple(line.split("\t")[:2]) for line in lines]  # type: ignore[misc]


def _config(tiny: Path, out: Path) -> dict:
    return {
        "model": {"name_or_path": tiny, "pooling": "mean", "max_seq_length": 24},
        "objective": {"name": "pairs", "scale": 20.0},
        "train": {"batch_size": 8, "max_steps": 4, "lr": 1e-3},
        "eval": {"every_steps": 2, "at_end": True},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "logging": {"log_every": 1, "tensorboard": False, "progress_bar": False},
        "output_dir": out,
    }


class Killed(Exception):
    pass


def test_training_with_a_python_task_records_it_and_resumes(
    tmp_path, tiny_bert_dir, shared_data
) -> None:
    train = _pairs(shared_data, "wiki-split-tune.tsv", 96)
    held = _pairs(shared_data, "wiki-split-test.tsv", 12)
    task = {  # sentence-transformers' InformationRetrievalEvaluator's three arguments
        "queries": {f"q{i}": q for i, (q, _) in enumerate(held)},
        "corpus": {f"d{i}": d for i, (_, d) in enumerate(held)},
        "relevant_docs": {f"q{i}": {f"d{i}"} for i in range(len(held))},
    }
    out = tmp_path / "run"

    def kill(step: int, record: dict) -> None:
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        contrasent.train(
            _config(tiny_bert_dir, out), train, eval_tasks={"ws": ("retrieval", task)},
            callbacks=[kill],
        )  # fmt: skip
    recorded = json.loads((out / "config.json").read_text())["eval"]
    assert recorded["tasks"][0].startswith("ws=retrieval:memory:")
    assert recorded["metric"] == "ws.ndcg@10"  # the first task's main metric
    # another process (nothing registered): resuming from the recorded config is one error
    saved = dict(memory._TASKS)
    memory._TASKS.clear()
    try:
        cfg = {**_config(tiny_bert_dir, out), "resume_from": "latest", "eval": recorded}
        with pytest.raises(UserError, match=r"eval task 'ws': its data \(memory:.*pass the same"):
            contrasent.train(cfg, train)
    finally:
        memory._TASKS.update(saved)
    cfg = {**_config(tiny_bert_dir, out), "resume_from": "latest"}
    result = contrasent.train(cfg, train, eval_tasks={"ws": ("retrieval", dict(task))})
    assert result.steps == 4
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert evals[-1]["step"] == 4 and 0 < evals[-1]["results"]["tasks"]["ws"]["ndcg@10"] <= 1
    assert json.loads((out / "config.json").read_text())["eval"]["tasks"] == recorded["tasks"]
