"""`contrasent mine` against sentence-transformers' ``mine_hard_negatives`` on the same model
and data (same negatives, same scores) for the deterministic settings; resume, shards, random
sampling, the statistics and the one-line mistakes."""

from __future__ import annotations

import json
import warnings

import pytest

from contrasent.core.errors import UserError
from contrasent.serve.mine import MineSettings, mine


@pytest.fixture(scope="module")
def st_model(tmp_path_factory, tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    from contrasent.model.encoder import Encoder

    out = tmp_path_factory.mktemp("mine_st") / "m"
    Encoder.from_pretrained(tiny_bert_dir, pooling="mean", device="cpu").save(out)
    return SentenceTransformer(str(out), device="cpu")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="module")
def pairs(shared_data):
    lines = (shared_data / "pairs" / "wiki-split-tune.tsv").read_text().splitlines()[:120]
    rows = [tuple(line.split("\t")[:2]) for line in lines]
    # an anchor with a second positive (another row's positive): grouped as the reference does
    rows.append((rows[0][0], rows[5][1]))
    return [a for a, _ in rows], [p for _, p in rows]


@pytest.fixture(scope="module")
def extra_corpus(shared_data):
    lines = (shared_data / "pairs" / "wiki-split-test.tsv").read_text().splitlines()[:60]
    return [line.split("\t")[1] for line in lines]


def _rows(anchors, positives):
    return list(zip(anchors, positives, strict=True))


def _encode(model):
    return lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True)


def _reference(model, anchors, positives, corpus, **options):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    data = Dataset.from_dict({"anchor": anchors, "positive": positives})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = mine_hard_negatives(
            data, model, corpus=corpus, output_format="n-tuple", output_scores=True,
            sampling_strategy="top", verbose=False, batch_size=64, **options,
        )  # fmt: skip
    return [dict(r) for r in out]


def _pairs_file(tmp_path, anchors, positives):
    from contrasent.serve.mine import PairsFile

    path = tmp_path / "pairs.jsonl"
    rows = [{"anchor": a, "positive": p} for a, p in zip(anchors, positives, strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return PairsFile(str(path), {"anchor": "anchor", "positive": "positive"})


CASES = {
    "plain": ({}, {}),
    "range": ({"range_min": 3, "range_max": 12, "num_negatives": 2},
              {"range_min": 3, "range_max": 12, "num_negatives": 2}),
    # the three filters at once (one MiniLM case: CI time), each checked to bite
    "margins_max_score": ({"margin": 0.002, "relative_margin": 0.05, "max_score": 0.5,
                           "num_negatives": 4},
                          {"absolute_margin": 0.002, "relative_margin": 0.05, "max_score": 0.5,
                           "num_negatives": 4}),
    "corpus": ({"range_min": 1}, {"range_min": 1}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_same_negatives_as_sentence_transformers(case, request, pairs, extra_corpus, tmp_path):
    """The margins need a model whose positives stand out: MiniLM; the rest: the tiny model."""
    ours_opts, theirs_opts = CASES[case]
    filtered = "margin" in case
    st_model = request.getfixturevalue("minilm" if filtered else "st_model")
    corpus = extra_corpus if case == "corpus" else None
    anchors, positives = pairs
    out = tmp_path / "mined.jsonl"
    source, chunk = _rows(anchors, positives), 4096
    if case == "plain":  # streamed from a file, in chunks smaller than the anchors' spread
        source, chunk = _pairs_file(tmp_path, anchors, positives), 16
    settings = MineSettings(**ours_opts)
    result = mine(_encode(st_model), source, out, settings, corpus, chunk_queries=chunk)
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    theirs = _reference(st_model, anchors, positives, corpus, **theirs_opts)
    assert len(ours) == len(theirs) == result.counts.rows > 0
    for a, b in zip(ours, theirs, strict=True):
        assert a["scores"] == pytest.approx(b.pop("scores"), abs=1e-5)
        assert {k: v for k, v in a.items() if k != "scores"} == b
    if filtered:  # each filter dropped candidates (counted by the first rule that drops one)
        c = result.counts
        assert c.margin > 0 and c.relative_margin > 0 and c.max_score > 0


def _texts(path) -> list[dict]:
    """The rows without their scores (a query embedded in another chunk differs by ~1e-7)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "scores"} for r in rows]


def test_resume_shards_random_and_stats(st_model, pairs, tmp_path):
    anchors, positives = pairs
    settings = MineSettings(num_negatives=2, range_max=10, sampling="random", seed=3)
    whole = tmp_path / "whole.jsonl"
    mine(_encode(st_model), _rows(anchors, positives), whole, settings, chunk_queries=50)
    rows = _texts(whole)
    # the same draws when chunked differently and when split into shards
    again = tmp_path / "again.jsonl"
    mine(_encode(st_model), _rows(anchors, positives), again, settings, chunk_queries=7)
    assert _texts(again) == rows
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.jsonl"
        mine(_encode(st_model), _rows(anchors, positives), part, settings, shard=(i, 3))
        parts += _texts(part)
    assert parts == rows
    # a run killed after its first chunk resumes from the work folder
    calls = []

    def flaky(texts):
        calls.append(len(texts))
        if len(calls) == 3:  # corpus, chunk 1, then dies in chunk 2
            raise KeyboardInterrupt
        return _encode(st_model)(texts)

    resumed = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        mine(flaky, _rows(anchors, positives), resumed, settings, chunk_queries=50)
    assert not resumed.exists() and (tmp_path / "resumed.jsonl.mine-work").is_dir()
    calls.clear()
    result = mine(flaky, _rows(anchors, positives), resumed, settings, chunk_queries=50)
    assert result.chunks_resumed == 1 and _texts(resumed) == rows
    assert not (tmp_path / "resumed.jsonl.mine-work").exists()
    # random picks differ from top, stay inside the window, and are reported best first
    from contrasent.serve.mine import describe

    text = describe(result, settings)
    assert "median" in text and f"mined {len(rows)} rows" in text
    top = MineSettings(num_negatives=2, range_max=10)
    mine(_encode(st_model), _rows(anchors, positives), tmp_path / "top.jsonl", top)
    assert _texts(tmp_path / "top.jsonl") != rows
    for line in whole.read_text().splitlines():
        scores = json.loads(line)["scores"][1:]
        assert scores == sorted(scores, reverse=True)


def test_mistakes_are_one_line(st_model, pairs, tmp_path):
    anchors, positives = pairs
    enc = _encode(st_model)
    with pytest.raises(UserError, match="--range_max 500 is beyond the corpus"):
        mine(enc, _rows(anchors, positives), tmp_path / "o.jsonl", MineSettings(range_max=500))
    with pytest.raises(UserError, match="leave 2 candidates for --num_negatives 3"):
        mine(
            enc,
            _rows(anchors, positives),
            tmp_path / "o.jsonl",
            MineSettings(range_min=4, range_max=6),
        )
    from contrasent.serve.mine import PairsFile

    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nc\t\nd\te\n")
    with pytest.raises(UserError, match="1 row\\(s\\) without an anchor or a positive"):
        mine(enc, PairsFile(str(bad)), tmp_path / "o.jsonl", MineSettings(num_negatives=1))
    mine(
        enc,
        PairsFile(str(bad), on_error="skip"),
        tmp_path / "o.jsonl",
        MineSettings(num_negatives=1),
    )
    assert [r["anchor"] for r in _texts(tmp_path / "o.jsonl")] == ["a", "d"]


def test_command_writes_what_the_pairs_kind_reads(tiny_bert_dir, shared_data, tmp_path, capsys):
    """`contrasent mine` end to end: the statistics printed, the output read by `pairs` with
    the hard-negative columns, and a mistake as one line (exit 2)."""
    from contrasent.cli.main import main
    from contrasent.data.registry import DataSpec, build_stream

    pairs_file = tmp_path / "p.tsv"
    lines = (shared_data / "pairs" / "wiki-split-tune.tsv").read_text().splitlines()[:40]
    pairs_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "hn.jsonl"
    args = ["mine", "--model", str(tiny_bert_dir), "--input", str(pairs_file), "--output",
            str(out), "--num_negatives", "2", "--max_score", "0.999", "--output_scores", "false"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mined 40 rows (2 negatives each)" in printed and "--max_score 0.999" in printed
    assert "scores" not in json.loads(out.read_text().splitlines()[0])
    columns = {"anchor": "anchor", "positive": "positive", "negative": ["negative_1", "negative_2"]}
    batch = next(
        iter(build_stream(DataSpec(kind="pairs", path=str(out), columns=columns), 8, 0, None))
    )
    assert len(batch.negatives) == 2 and len(batch) == 8
    assert main([*args[:-6], "--num_negatives", "3", "--range_min", "2", "--range_max", "4"]) == 2
    assert "leave 2 candidates for --num_negatives 3" in capsys.readouterr().err


def test_index_reuses_its_embeddings_with_the_same_negatives(
    tiny_bert_dir, shared_data, tmp_path, capsys
):
    """`mine --index DIR` (an index of `contrasent index build`) mines the same negatives as
    `mine --corpus FILE` on the file the index was built from, embedding only the positives
    the index lacks; the model comes from the index (one line); a different --model is one
    line; with --engine faiss the index's own faiss index answers when it holds exactly the
    candidates."""
    from contrasent.cli.main import main

    lines = (shared_data / "pairs" / "wiki-split-tune.tsv").read_text().splitlines()[:30]
    pairs_file = tmp_path / "p.tsv"
    pairs_file.write_text("\n".join(lines) + "\n")
    others = (shared_data / "pairs" / "wiki-split-test.tsv").read_text().splitlines()[:20]
    positives = [line.split("\t")[1] for line in lines]
    corpus = tmp_path / "corpus.txt"  # an empty line, a duplicate, half the positives
    texts = [o.split("\t")[1] for o in others] + ["", others[0].split("\t")[1]] + positives[::2]
    corpus.write_text("\n".join(texts) + "\n")
    model = ["--model", str(tiny_bert_dir)]
    assert (
        main(["index", "build", *model, "--input", str(corpus), "--output", str(tmp_path / "idx")])
        == 0
    )
    common = ["mine", "--input", str(pairs_file), "--num_negatives", "2", "--range_min", "1"]
    capsys.readouterr()
    assert (
        main([*common, *model, "--corpus", str(corpus), "--output", str(tmp_path / "c.jsonl")]) == 0
    )
    plain = capsys.readouterr().out
    assert (
        main([*common, "--index", str(tmp_path / "idx"), "--output", str(tmp_path / "i.jsonl")])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"the model the index {tmp_path / 'idx'} was built with: {tiny_bert_dir}" in printed
    assert "over 50 corpus texts (embeddings of 35 reused from the index)" in printed
    # 20 texts (+ an empty line, a duplicate) and 15 positives in the index; 15 positives not
    assert "over 50 corpus texts ->" in plain
    rows = [json.loads(x) for x in (tmp_path / "i.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(rows) == len(want) == 30
    for a, b in zip(rows, want, strict=True):
        assert a.pop("scores") == pytest.approx(b.pop("scores"), abs=1e-5)
        assert a == b
    # another model (here: the same weights pooled differently) is refused in one line
    other = [*common, *model, "--pooling", "cls", "--index", str(tmp_path / "idx")]
    assert main([*other, "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "does not embed as the index" in capsys.readouterr().err
    # an index holding exactly the candidates: its saved faiss index is searched
    exact = tmp_path / "exact.txt"
    exact.write_text("\n".join(dict.fromkeys(texts[:20] + positives)) + "\n")
    build = ["index", "build", *model, "--input", str(exact), "--engine", "faiss"]
    assert main([*build, "--output", str(tmp_path / "fidx")]) == 0
    faiss_run = [*common, "--index", str(tmp_path / "fidx"), "--engine", "faiss"]
    assert main([*faiss_run, "--output", str(tmp_path / "f.jsonl")]) == 0
    assert "searched with the faiss index saved in" in capsys.readouterr().out
    assert (
        main([*common, *model, "--corpus", str(exact), "--output", str(tmp_path / "e.jsonl")]) == 0
    )
    assert _texts(tmp_path / "f.jsonl") == _texts(tmp_path / "e.jsonl")
