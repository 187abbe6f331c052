"""`contrasent eval --tasks` with the user's own task files: mixed with built-in names, one table
per kind, every number in the JSON under tasks.NAME.METRIC, and each malformed file one line
naming file:line with exit 2 before any model loads."""

from __future__ import annotations

import json
import re

import pytest

from contrasent.cli.main import main


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_task_files_and_builtin_names_in_one_run(capsys, tiny_bert_dir, shared_data, tmp_path):
    tasks = shared_data / "tasks"
    out = tmp_path / "res.json"
    spec = f"{tasks}/mrpc-pairs.tsv,trec=clustering:{tasks}/trec-clusters.tsv,stsb"
    code, text, err = run(capsys, "eval", "--model", str(tiny_bert_dir), "--tasks", spec,
                          "--mode", "dev", "--output", str(out))  # fmt: skip
    assert code == 0, err
    results = json.loads(out.read_text())["tasks"]
    assert results["mrpc-pairs"]["kind"] == "pairs" and 0 <= results["mrpc-pairs"]["ap"] <= 1
    assert results["mrpc-pairs"]["n_pairs"] == 1725
    assert results["trec"]["kind"] == "clustering" and 0 <= results["trec"]["v_measure"] <= 1
    assert results["STSBenchmark"]["spearman"]["dev"] is not None  # the built-in name too
    assert "pair classification" in text and "clustering" in text and "STSBenchmark" in text
    table = text[text.index("pair classification") :].splitlines()
    assert any(line.split("|")[1].strip() == "mrpc-pairs" for line in table if "|" in line)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.tsv", "sentence1\tsentence2\tscore\na\tb\t1\nc\td\tlots\n", r"bad.tsv:3: "),
        ("nolabel.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\nc\td\t2\n", r"nolabel.tsv:3: "),
        (
            "cols.tsv",
            "first\tsecond\tscore\na\tb\t1\n",
            r"cols.tsv:1: .*'first', 'second', 'score'",
        ),
        ("empty.tsv", "text\tlabel\n", r"empty.tsv"),
        (
            "rr.jsonl",
            '{"query": "q", "positive": ["a"], "negative": ["b"]}\n{"query": \n',
            r"rr.jsonl:2: ",
        ),
    ],
)
def test_malformed_task_file_is_one_line_before_the_model_loads(
    capsys, tmp_path, name, content, message
) -> None:
    path = tmp_path / name
    path.write_text(content)
    kind = {"bad.tsv": "sts", "nolabel.tsv": "pairs", "cols.tsv": "sts", "empty.tsv":
            "clustering", "rr.jsonl": "reranking"}[name]  # fmt: skip
    code, _, err = run(capsys, "eval", "--model", str(tmp_path / "no-model"),
                       "--tasks", f"{kind}:{path}")  # fmt: skip
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    assert "no-model" not in lines[0]  # the task file was checked first


def test_unknown_ids_in_qrels_name_the_line(capsys, tmp_path) -> None:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a doc"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n")
    code, _, err = run(capsys, "eval", "--model", str(tmp_path / "no-model"),
                       "--tasks", f"retrieval:{folder}")  # fmt: skip
    assert code == 2 and "test.tsv:3" in err and "d9" in err, err


def test_python_api_takes_an_encoder_and_a_path_or_lists(tiny_bert_dir, tmp_path) -> None:
    from contrasent import Encoder
    from contrasent.eval import evaluate_sts_file
    from contrasent.eval.tasks.sts_file import STSTask

    pairs = [("a cat sleeps", "a cat is sleeping", 4.8), ("a man runs", "the stock fell", 0.2),
             ("kids play", "children are playing", 4.1), ("it rains", "a dog barks", 1.0)]  # fmt: skip
    path = tmp_path / "mine.tsv"
    path.write_text(
        "sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs)
    )
    encoder = Encoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    from_file = evaluate_sts_file(encoder, path)
    in_memory = evaluate_sts_file(encoder.encode, STSTask(*map(list, zip(*pairs, strict=True))))
    assert from_file == in_memory and set(from_file) >= {"spearman", "pearson"}
