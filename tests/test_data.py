"""Data layer: streaming readers, NLI triplets, mixtures, determinism and exact resume."""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from contrasent.core.errors import UserError
from contrasent.data.batches import PairBatch, SentenceBatch
from contrasent.data.data_config import load_data_config
from contrasent.data.nli import read_nli_triplets
from contrasent.data.readers import (
    BAD_ROW,
    BAD_UTF8,
    EMPTY_FIELD,
    EMPTY_LINE,
    PairReader,
    ReadStats,
    read_texts,
)
from contrasent.data.registry import DataSpec, build_stream
from contrasent.data.streams import buffer_shuffle, keyed_rng


def write(path: Path, data: str | bytes) -> Path:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def pairs(path, columns=None, **kw) -> tuple[list[tuple[str, ...]], ReadStats]:
    stats = ReadStats(str(path))
    return list(PairReader(path, columns, **kw).rows(stats)), stats


def batches(stream, n):
    return [next(stream) for _ in range(n)]


# --- text files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["c.txt", "c.txt.gz"])
def test_text_streams_strips_and_counts_empty_lines(tmp_path, name):
    path = write(tmp_path / name, "first line\n\n   \t \n second \r\nthird")
    stats = ReadStats(name)
    assert list(read_texts(path, stats=stats)) == ["first line", "second", "third"]
    assert (stats.rows, stats.lines, stats.skipped) == (3, 5, {EMPTY_LINE: 2})
    assert "skipped 2 (empty line: 2)" in stats.summary()


@pytest.mark.parametrize("name", ["bad.txt", "bad.txt.gz"])
def test_text_bad_utf8_names_line_or_is_a_counted_skip(tmp_path, name):
    path = write(tmp_path / name, b"ok one\nok two\nbad \xff\xfe byte\nok three\n")
    with pytest.raises(UserError, match=rf"{name}:3: invalid UTF-8"):
        list(read_texts(path))
    stats = ReadStats(name)
    assert list(read_texts(path, on_error="skip", stats=stats)) == ["ok one", "ok two", "ok three"]
    assert stats.skipped == {BAD_UTF8: 1}


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        list(read_texts(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="cannot tell the format"):
        PairReader(tmp_path / "x.dat")


# --- pair files ------------------------------------------------------------------------------

COLS = {"anchor": "sentence1", "positive": "sentence2", "negative": ["hard_neg"]}
EXPECTED = [("a one", "p one", "n one"), ("a, two", "p two", "n two")]


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_tsv_csv_jsonl_named_columns(tmp_path, gz):
    tsv = write(
        tmp_path / f"d.tsv{gz}",
        "id\thard_neg\tsentence2\tsentence1\n1\tn one\tp one\ta one\n2\tn two\tp two\ta, two\n",
    )
    csv = write(
        tmp_path / f"d.csv{gz}",
        'sentence1,sentence2,hard_neg\na one,p one,n one\n"a, two","p two","n two"\n',
    )
    rows = [{"sentence1": a, "sentence2": p, "hard_neg": n, "x": 1} for a, p, n in EXPECTED]
    jsonl = write(tmp_path / f"d.jsonl{gz}", "".join(json.dumps(r) + "\n" for r in rows))
    for path in (tsv, csv, jsonl):
        got, stats = pairs(path, COLS)
        assert got == EXPECTED, path
        assert stats.rows == 2 and not stats.skipped


def test_headerless_indices_and_1b_style_json_lists(tmp_path):
    tsv = write(tmp_path / "h.tsv", "x\ta one\tp one\nx\ta two\tp two\n")
    got, _ = pairs(tsv, {"anchor": "1", "positive": 2})
    assert got == [("a one", "p one"), ("a two", "p two")]
    positional, _ = pairs(tsv)  # no map: anchor, positive, negatives... in order
    assert positional[0] == ("x", "a one", "p one")
    lists = write(
        tmp_path / "l.jsonl", '["a one", "p one", "n one"]\n["a two", "p two", "n two"]\n'
    )
    reader = PairReader(lists)
    assert list(reader.rows()) == [("a one", "p one", "n one"), ("a two", "p two", "n two")]
    assert reader.num_negatives == 1
    got, _ = pairs(lists, {"anchor": 1, "positive": 0})
    assert got == [("p one", "a one"), ("p two", "a two")]


def test_csv_multiline_quoted_field_keeps_line_numbers(tmp_path):
    path = write(tmp_path / "m.csv", 'a,b\n"two\nlines",p1\nonly-one-field\n')
    with pytest.raises(UserError, match=r"m\.csv:4: expected 2 columns"):
        pairs(path, {"anchor": "a", "positive": "b"})
    got, stats = pairs(path, {"anchor": "a", "positive": "b"}, on_error="skip")
    assert got == [("two\nlines", "p1")] and stats.skipped == {BAD_ROW: 1}


ERROR_CASES = [
    # (file name, content, columns, error pattern)
    ("c.tsv", "s1\ts2\na\tb\n", {"anchor": "s1", "positive": "nope"}, r"c\.tsv:1: column 'nope'"),
    (
        "w.tsv",
        "s1\ts2\na\tb\nc\td\te\n",
        {"anchor": "s1", "positive": "s2"},
        r"w\.tsv:3: expected 2",
    ),
    ("w.csv", "s1,s2\na,b\nc\n", {"anchor": "s1", "positive": "s2"}, r"w\.csv:3: expected 2"),
    (
        "j.jsonl",
        '{"q": "a", "p": "b"}\n{"q": "c", "p": \n',
        {"anchor": "q", "positive": "p"},
        r"j\.jsonl:2: invalid JSON",
    ),
    (
        "k.jsonl",
        '{"q": "a", "p": "b"}\n{"q": "c"}\n',
        {"anchor": "q", "positive": "p"},
        r"k\.jsonl:2: missing key",
    ),
    (
        "t.jsonl",
        '{"q": "a", "p": "b"}\n{"q": "c", "p": 3}\n',
        {"anchor": "q", "positive": "p"},
        r"t\.jsonl:2: expected text",
    ),
    ("s.jsonl", '["a", "b"]\n["c"]\n', None, r"s\.jsonl:2: expected 2 fields"),
    (
        "u.tsv",
        "s1\ts2\na\tb\nc\t\xff\n",
        {"anchor": "s1", "positive": "s2"},
        r"u\.tsv:3: invalid UTF-8",
    ),
]


@pytest.mark.parametrize("name,content,columns,pattern", ERROR_CASES)
def test_pair_errors_name_file_line_or_are_counted_skips(tmp_path, name, content, columns, pattern):
    raw = content.encode("utf-8").replace(b"\xc3\xbf", b"\xff")  # a real invalid byte
    path = write(tmp_path / name, raw)
    with pytest.raises(UserError, match=pattern):
        pairs(path, columns)
    if "column 'nope'" in pattern:  # a config error: never skipped
        with pytest.raises(UserError, match=pattern):
            pairs(path, columns, on_error="skip")
        return
    got, stats = pairs(path, columns, on_error="skip")
    assert len(got) == 1 and stats.total_skipped == 1


def test_empty_anchor_or_positive_is_a_counted_skip(tmp_path):
    path = write(tmp_path / "e.tsv", "a\tp\n\tp2\na3\t  \n\na4\tp4\n")
    got, stats = pairs(path)
    assert got == [("a", "p"), ("a4", "p4")]
    assert stats.skipped == {EMPTY_FIELD: 2, EMPTY_LINE: 1}


def test_column_map_mistakes_are_errors(tmp_path):
    path = write(tmp_path / "x.tsv", "a\tb\n")
    with pytest.raises(UserError, match="unknown column role"):
        PairReader(path, {"anchor": "a", "positive": "b", "query": "c"})
    with pytest.raises(UserError, match="needs a 'positive'"):
        PairReader(path, {"anchor": "a"})
    with pytest.raises(UserError, match="integer indices"):
        PairReader(path, {"anchor": "a", "positive": "b"}, header=False)
    with pytest.raises(UserError, match="column index 5"):
        pairs(path, {"anchor": 0, "positive": 5})
    with pytest.raises(UserError, match="give columns"):
        pairs(write(tmp_path / "o.jsonl", '{"a": "x", "b": "y"}\n'))


def test_wiki_split_reads_5000_pairs(shared_data):
    for split in ("test", "tune", "validation"):
        got, stats = pairs(shared_data / "pairs" / f"wiki-split-{split}.tsv")
        assert len(got) == 5000 and not stats.skipped
        assert all(len(r) == 2 for r in got) and " <::::> " in got[0][1]


# --- NLI ------------------------------------------------------------------------------------


def make_snli(folder: Path, rows: list[tuple[str, str, str]], split: str = "train") -> Path:
    folder.mkdir(exist_ok=True)
    for k, stem in enumerate(("s1", "s2", "labels")):
        (folder / f"{stem}.{split}").write_text("".join(r[k] + "\n" for r in rows))
    return folder


def test_nli_triplets_by_hand(tmp_path):
    rows = [
        ("P1", "P1 neutral", "neutral"),
        ("P1", "P1 ent", "entailment"),
        ("P1", "P1 con", "contradiction"),
        ("P2", "P2 con", "contradiction"),  # no entailment: no triplet
        ("P2", "P2 neu", "neutral"),
        ("P3", "P3 ent a", "entailment"),
        ("P3", "P3 ent b", "entailment"),  # second entailment: unused
        ("P3 ", "P3 con", "contradiction"),  # same premise after stripping
        ("P4", "P4 ent", "-"),  # no gold label: counted skip
        ("P1", "P1 con 2", "contradiction"),  # late extra contradiction: unused
    ]
    triplets, stats = read_nli_triplets(make_snli(tmp_path / "snli", rows))
    assert triplets == [("P1", "P1 ent", "P1 con"), ("P3", "P3 ent a", "P3 con")]
    assert stats.rows == 2 and stats.skipped == {"no gold label": 1}
    assert stats.info["premises"] == 3
    assert stats.info["premises without entailment+contradiction"] == 1
    assert stats.info["unused hypotheses (beyond the first of a label)"] == 2
    assert stats.info["neutral pairs"] == 2


def test_nli_errors(tmp_path):
    folder = make_snli(tmp_path / "a", [("p", "h", "entailment"), ("p", "h2", "maybe")])
    with pytest.raises(UserError, match=r"labels\.train:2: unknown label 'maybe'"):
        read_nli_triplets(folder)
    (folder / "s2.train").write_text("h\n")
    with pytest.raises(UserError, match=r"s2\.train:2: file ends early"):
        read_nli_triplets(folder)
    with pytest.raises(UserError, match="missing s1.dev"):
        read_nli_triplets(folder, "dev")


def test_nli_counts_on_shared_snli_dev(senteval_dir):
    triplets, stats = read_nli_triplets(senteval_dir / "SNLI", "dev")
    assert stats.lines == 9842 and len(triplets) == stats.rows == 2943
    assert stats.info["premises"] == 3319
    assert [stats.info[f"{k} pairs"] for k in ("entailment", "neutral", "contradiction")] == [
        3329,
        3235,
        3278,
    ]
    assert len({t[0] for t in triplets}) == 2943  # one triplet per premise


# --- shuffling, streams, resume -------------------------------------------------------------


def test_buffer_shuffle_is_a_permutation_and_full_when_it_fits():
    items = [str(i) for i in range(100)]
    local = list(buffer_shuffle(items, 10, keyed_rng(0, 0, 0)))
    full = list(buffer_shuffle(items, 1000, keyed_rng(0, 0, 0)))
    assert sorted(local) == sorted(full) == sorted(items)
    assert local != items and full != items and local != full
    assert list(buffer_shuffle(items, 1, keyed_rng(0))) == items


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write(tmp_path / "c.txt.gz", "".join(f"sentence {i}\n" for i in range(103)) + "\n")


def test_text_stream_epochs_steps_and_shuffle(corpus):
    spec = DataSpec(kind="text", path=str(corpus), shuffle_buffer=16, epochs=2)
    stream = build_stream(spec, batch_size=10, seed=1)
    assert stream.steps_per_epoch == 10 and stream.total_steps == 20
    got = list(stream)
    assert len(got) == 20 and all(isinstance(b, SentenceBatch) and len(b) == 10 for b in got)
    epoch0 = [t for b in got[:10] for t in b.texts]
    assert len(set(epoch0)) == 100  # no row twice in an epoch
    assert epoch0 != [t for b in got[10:] for t in b.texts]  # each epoch reshuffled
    keep = build_stream(DataSpec(kind="text", path=str(corpus), drop_last=False), 10, 1)
    assert keep.steps_per_epoch == 11
    assert [len(b) for b in keep] == [10] * 10 + [3]
    assert stream.stats[0].skipped == {EMPTY_LINE: 1}


def test_same_seed_same_batches_other_seed_different(corpus):
    spec = DataSpec(kind="text", path=str(corpus), shuffle_buffer=32, epochs=None)
    a, b, c = (build_stream(spec, 8, s) for s in (5, 5, 6))
    first = batches(a, 30)
    assert first == batches(b, 30)
    assert first != batches(c, 30)


def assert_exact_resume(make, before: int, after: int) -> None:
    """Batches after a save/load into a fresh stream equal the uninterrupted ones."""
    reference = batches(make(), before + after)
    interrupted = make()
    batches(interrupted, before)
    state = json.loads(json.dumps(interrupted.state_dict()))  # plain data only
    resumed = make()
    resumed.load_state_dict(state)
    assert batches(resumed, after) == reference[before:]


def write_mixture(tmp_path: Path, weights=(1, 2, 5), negatives=(0, 0, 0)) -> Path:
    """Datasets ds0, ds1, ... (13, 14, ... JSON-list rows; every text starts with the name)."""
    entries = []
    for k, (w, n) in enumerate(zip(weights, negatives, strict=True)):
        name = f"ds{k}"
        rows = [[f"{name} a{i}", f"{name} p{i}"] + [f"{name} n{i}"] * n for i in range(13 + k)]
        write(tmp_path / f"{name}.jsonl.gz", "".join(json.dumps(r) + "\n" for r in rows))
        entries.append({"name": f"{name}.jsonl.gz", "weight": w})
    config = tmp_path / "data_config.json"
    config.write_text(json.dumps(entries))
    return config


@pytest.mark.parametrize("kind", ["text", "pairs", "nli", "mixture-one", "mixture-mixed"])
def test_exact_resume(tmp_path, corpus, kind):
    if kind == "text":
        spec = DataSpec(kind="text", path=str(corpus), shuffle_buffer=8, epochs=3, drop_last=False)
    elif kind == "pairs":
        path = write(tmp_path / "p.tsv", "".join(f"a{i}\tp{i}\tn{i}\n" for i in range(37)))
        spec = DataSpec(kind="pairs", path=str(path), shuffle_buffer=5, epochs=None)
    elif kind == "nli":
        rows = [
            (f"P{i}", f"e{i}", lab) for i in range(30) for lab in ("entailment", "contradiction")
        ]
        spec = DataSpec(kind="nli", path=str(make_snli(tmp_path / "nli", rows)), epochs=None)
    else:
        spec = DataSpec(
            kind="mixture",
            data_config=str(write_mixture(tmp_path)),
            shuffle_buffer=4,
            epochs=None,
            batch_from_one_dataset=kind == "mixture-one",
        )
    make = lambda: build_stream(spec, 4, seed=3)  # noqa: E731
    for before in (1, 7, 12, 25):  # within and across epoch boundaries
        assert_exact_resume(make, before, 9)


def test_resume_refuses_a_changed_setup_and_a_finished_state_stays_finished(corpus):
    spec = DataSpec(kind="text", path=str(corpus))
    done = build_stream(spec, 50, seed=0)
    assert len(list(done)) == 2
    with pytest.raises(UserError, match="batch_size: saved 50, now 8"):
        build_stream(spec, 8, seed=0).load_state_dict(done.state_dict())
    fresh = build_stream(spec, 50, seed=0)
    fresh.load_state_dict(done.state_dict())
    assert list(fresh) == []


def test_mixture_follows_weights_and_one_dataset_per_batch(tmp_path):
    config = write_mixture(tmp_path, weights=(1, 2, 5), negatives=(0, 1, 2))
    spec = DataSpec(kind="mixture", data_config=str(config), epochs=None, shuffle_buffer=4)
    stream = build_stream(spec, 3, seed=0)
    names = Counter()
    for batch in batches(stream, 800):
        assert isinstance(batch, PairBatch) and batch.dataset is not None
        prefix = batch.dataset.split(".")[0]
        texts = batch.anchors + batch.positives + [t for col in batch.negatives for t in col]
        assert all(t.startswith(prefix + " ") for t in texts)  # every row from that dataset
        assert len(batch.negatives) == int(prefix[-1])
        names[prefix] += 1
    shares = [names[f"ds{k}"] / 800 for k in range(3)]
    assert shares == pytest.approx([1 / 8, 2 / 8, 5 / 8], abs=0.05)


def test_mixed_batches_follow_weights_per_row(tmp_path):
    config = write_mixture(tmp_path, weights=(1, 3, 4))
    spec = DataSpec(kind="mixture", data_config=str(config), batch_from_one_dataset=False)
    stream = build_stream(spec, 8, seed=0)
    assert stream.steps_per_epoch == (13 + 14 + 15) // 8 and stream.total_steps == 5
    stream = build_stream(DataSpec(**{**spec.__dict__, "epochs": None}), 8, seed=0)
    rows = Counter(a.split()[0] for b in batches(stream, 300) for a in b.anchors)
    assert [rows[f"ds{k}"] / 2400 for k in range(3)] == pytest.approx(
        [1 / 8, 3 / 8, 4 / 8], abs=0.03
    )
    with pytest.raises(UserError, match="same number of negatives"):
        build_stream(
            DataSpec(
                kind="mixture",
                data_config=str(write_mixture(tmp_path, negatives=(0, 1, 0))),
                batch_from_one_dataset=False,
            ),
            8,
            0,
        )


@pytest.mark.parametrize(
    "entry,pattern",
    [
        ({"name": "missing.jsonl", "weight": 1}, r"entry 1 \(missing.jsonl\): data file not found"),
        ({"name": "ds0.jsonl.gz", "weight": 0}, r"entry 1 .*'weight' must be a positive integer"),
        (
            {"name": "ds0.jsonl.gz", "weight": "2"},
            r"entry 1 \(ds0.jsonl.gz\): 'weight' must be a positive integer, got '2'",
        ),
        ({"name": "ds0.jsonl.gz", "weight": True}, r"entry 1 .*'weight' must be a positive"),
        (
            {"name": "ds0.jsonl.gz", "weight": 1, "lnes": 3},
            r"entry 1 .*unknown key\(s\) \['lnes'\]",
        ),
        ({"weight": 1}, r"entry 1: needs a 'name' or 'path'"),
        ({"name": "ds1.jsonl.gz", "weight": 1}, r"entries 0 and 1 are both named"),
    ],
)
def test_data_config_errors_name_file_and_entry(tmp_path, entry, pattern):
    write_mixture(tmp_path)
    config = tmp_path / "bad_config.json"
    config.write_text(json.dumps([{"name": "ds1.jsonl.gz", "weight": 2}, entry]))
    with pytest.raises(UserError, match=rf"bad_config\.json: {pattern}"):
        load_data_config(config)
    config.write_text('[{"name": \n')
    with pytest.raises(UserError, match=r"bad_config\.json:2: invalid JSON"):
        load_data_config(config)


def test_1b_data_config_format_loads(tmp_path, minilm_dir):
    raw = json.loads((minilm_dir / "data_config.json").read_text())
    assert {"name", "weight", "lines"} >= set(raw[0])
    for item in raw[:3]:
        (tmp_path / item["name"]).parent.mkdir(parents=True, exist_ok=True)
        write(tmp_path / item["name"], '["q", "a"]\n')  # tiny stand-ins for the real files
    (tmp_path / "cfg.json").write_text(json.dumps(raw[:3]))
    entries = load_data_config(tmp_path / "cfg.json")
    assert [e.weight for e in entries] == [r["weight"] for r in raw[:3]]
    assert entries[0].lines == raw[0]["lines"]


def test_errors_surface_before_training(tmp_path, caplog):
    lines = "".join(f"a{i}\tp{i}\n" for i in range(50)) + "a\tb\tc\n"
    path = write(tmp_path / "late.tsv", lines)
    with pytest.raises(UserError, match=r"late\.tsv:51: expected 2 columns"):
        build_stream(DataSpec(kind="pairs", path=str(path)), 4, 0)  # the scan finds it
    lazy = build_stream(DataSpec(kind="pairs", path=str(path), scan=False), 4, 0)
    assert lazy.steps_per_epoch is None
    with pytest.raises(UserError, match=r"late\.tsv:51"):
        list(lazy)
    with caplog.at_level(logging.INFO):
        ok = build_stream(DataSpec(kind="pairs", path=str(path), on_error="skip"), 4, 0)
    assert ok.stats[0].skipped == {BAD_ROW: 1} and "malformed row: 1" in caplog.text
    header = write(tmp_path / "h.tsv", "s1\ts2\na\tb\n")
    with pytest.raises(UserError, match=r"h\.tsv:1: column 'x'"):
        build_stream(
            DataSpec(kind="pairs", path=str(header), columns={"anchor": "x", "positive": "s2"}),
            1,
            0,
        )


def test_dedup_in_batch_drops_and_counts(tmp_path, caplog):
    path = write(tmp_path / "d.tsv", "q\ta1\nq\ta2\nr\ta3\ns\ta4\n")
    spec = DataSpec(
        kind="pairs", path=str(path), shuffle_buffer=0, dedup_in_batch=True, drop_last=False
    )
    stream = build_stream(spec, 2, 0)
    with caplog.at_level(logging.INFO):
        got = list(stream)
    assert [b.anchors for b in got] == [["q", "r"], ["s"]]
    assert "skipped 1 rows sharing a text" in caplog.text


def test_spec_checks():
    with pytest.raises(UserError, match="data.path is required"):
        build_stream(DataSpec(kind="pairs"), 4, 0)
    with pytest.raises(UserError, match="data.data_config is required"):
        build_stream(DataSpec(kind="mixture"), 4, 0)
    with pytest.raises(UserError, match="data.epochs"):
        build_stream(DataSpec(kind="text", path="x.txt", epochs=0), 4, 0)
    with pytest.raises(UserError, match="texts take one column"):
        build_stream(DataSpec(kind="text", path="x.txt", columns={"anchor": "a"}), 4, 0)
    with pytest.raises(UserError, match="columns does not apply"):
        build_stream(DataSpec(kind="nli", path="x", columns={"text": "a"}), 4, 0)


def test_dataspec_parses_with_jsonargparse(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(DataSpec, "data")
    parser.add_argument("--config", action="config")
    yaml = "data:\n  kind: pairs\n  columns: {anchor: 0, positive: '1', negative: [s, 3]}\n"
    cfg = parser.parse_args(["--config", str(write(tmp_path / "c.yaml", yaml)), "--data.path=a"])
    assert cfg.data.columns == {"anchor": 0, "positive": "1", "negative": ["s", 3]}
    assert cfg.data.epochs == 1 and cfg.data.on_error == "raise" and cfg.data.path == "a"


def test_nli_pairs_keep_every_label_and_stream_nli_batches(tmp_path):
    from contrasent.data.batches import NLIBatch

    rows = [("p1", "h1", "entailment"), ("p1", "h2", "neutral"), ("p1", "h3", "contradiction"),
            ("p2", "h4", "-"), ("p2", "h5", "neutral")]  # fmt: skip
    folder = make_snli(tmp_path / "nli", rows)
    stream = build_stream(DataSpec(kind="nli_pairs", path=str(folder), shuffle_buffer=0), 2, 0)
    first = next(stream)
    assert isinstance(first, NLIBatch) and first.index == 0
    assert (first.premises, first.hypotheses, first.labels) == (["p1", "p1"], ["h1", "h2"], [0, 1])
    second = next(stream)
    assert second.labels == [2, 1] and second.index == 1
    stats = stream.stats[0]
    assert stats.skipped == {"no gold label": 1}
    assert stats.info == {"entailment pairs": 1, "neutral pairs": 2, "contradiction pairs": 1}


def test_typed_batches_slice_themselves():
    """No guessing from shapes: a PairBatch with as many negative columns as rows slices its
    columns' rows (the old shape guess took the columns for rows); offsets follow the slices."""
    from contrasent.data.batches import NLIBatch, PairBatch, SentenceBatch, row_keys

    pairs = PairBatch(["a0", "a1"], ["p0", "p1"], [["x0", "x1"], ["y0", "y1"]], index=4)
    part = pairs.slice(1, 2)
    assert part.negatives == [["x1"], ["y1"]] and part.anchors == ["a1"] and part.offset == 1
    assert row_keys(part.slice(0, 1), salt=2) == [(4, 1, 2)]
    nli = NLIBatch(["p0", "p1", "p2"], ["h0", "h1", "h2"], [0, 1, 2], offset=6).slice(1, 3)
    assert nli.labels == [1, 2] and nli.offset == 7
    assert len(SentenceBatch(["s"] * 5).slice(2, 4)) == 2
    with pytest.raises(ValueError, match="labels must be 0..2"):
        NLIBatch(["p"], ["h"], [3])
    with pytest.raises(ValueError, match="negatives"):
        PairBatch(["a"], ["p"], [["x", "y"]])
