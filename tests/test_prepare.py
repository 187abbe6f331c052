"""`contrasent data prepare`: counts on a fixture with known duplicates, short lines and
abbreviations; the held-out split is a property of the text (a grown corpus keeps old held-out
lines held out); shards partition the documents; table inputs; the documents output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contrasent.core.errors import UserError
from contrasent.data.dedup import NearDedup, normalize
from contrasent.data.prepare import PrepareConfig, prepare
from contrasent.data.sentences import make_splitter, split_stream

LONG = "the committee approved the new budget for the public library after a long debate"
DOCS = [
    # abbreviations and a decimal: 2 sentences, not 4
    "Mr. Smith paid $3.50 for the old map. Then he left the shop before noon.",
    # an exact duplicate after normalisation (case, punctuation, spacing) of the first sentence
    "MR SMITH paid $3.50 for the  old map!",
    # a near duplicate: one word added to a long sentence (Jaccard 0.92 over 5-grams)
    f"The {LONG}. Everyone went home happy that evening.",
    f"The {LONG} today.",
    # too short (characters), too few words
    "Ok. Yes indeed.",
]


def _run(tmp_path: Path, docs: list[str], **opts) -> tuple[dict, list[str]]:
    src = tmp_path / "docs.txt"
    src.write_text("\n".join(docs) + "\n")
    out = tmp_path / opts.pop("name", "out")
    report = prepare(PrepareConfig(input=[str(src)], output=str(out), **opts))
    return report, (out / "train.txt").read_text().splitlines()


def test_counts_on_known_fixture(tmp_path):
    report, lines = _run(tmp_path, DOCS)
    c = report["counts"]
    assert c["documents"] == 5
    assert c["sentences"] == 2 + 1 + 2 + 1 + 2  # abbreviations and $3.50 were not split
    assert c["exact_duplicates"] == 1 and c["near_duplicates"] == 1
    assert c["too_short_chars"] == 1 and c["too_few_words"] == 1  # "Ok." / "Yes indeed."
    assert c["train"] == len(lines) == 4
    assert lines[0] == "Mr. Smith paid $3.50 for the old map."
    assert json.loads((tmp_path / "out" / "report.json").read_text())["counts"] == c
    # the near-duplicate step off: the changed sentence stays
    report, _ = _run(tmp_path, DOCS, near_dup=False, name="exact-only")
    assert report["counts"]["near_duplicates"] == 0 and report["counts"]["train"] == 5


def test_splitters_compared_on_abbreviations():
    text = "Dr. Watson, i.e. the doctor, arrived at 5 p.m. on Jan. 3. He was late."
    assert make_splitter("syntok")(text) == [
        "Dr. Watson, i.e. the doctor, arrived at 5 p.m. on Jan. 3.",
        "He was late.",
    ]
    assert len(make_splitter("regex")(text)) > 2  # the walkthrough's regex breaks at "Dr."
    # streamed in small blocks, a document splits as it does whole
    doc = [f"Sentence number {i} ends here. " for i in range(200)]
    split = make_splitter("syntok")
    assert list(split_stream(doc, split, block_chars=300)) == split(" ".join(doc))


def test_held_out_lines_stay_held_out_in_a_grown_corpus(tmp_path, shared_data):
    corpus = (shared_data / "corpus" / "wiki1m-head.txt").read_text().splitlines()[:400]
    opts = {"validation": 0.2, "split": "none", "near_dup": False}
    _run(tmp_path, corpus[:200], name="small", **opts)
    _run(tmp_path, corpus, name="grown", **opts)
    small = set((tmp_path / "small" / "validation.txt").read_text().splitlines())
    grown = set((tmp_path / "grown" / "validation.txt").read_text().splitlines())
    assert 20 < len(small) < 60 and small <= grown
    train = set((tmp_path / "grown" / "train.txt").read_text().splitlines())
    assert not train & grown


def test_shards_partition_the_documents(tmp_path, shared_data):
    corpus = (shared_data / "corpus" / "wiki1m-head.txt").read_text().splitlines()[:90]
    opts = {"split": "none", "near_dup": False, "exact_dup": False}
    _, whole = _run(tmp_path, corpus, **opts)
    parts = []
    for i in range(3):
        report, _ = _run(tmp_path, corpus, shard=f"{i}/3", **opts)
        parts += (tmp_path / f"out.shard-{i}-of-3" / "train.txt").read_text().splitlines()
    assert sorted(parts) == sorted(whole)
    with pytest.raises(UserError, match="--shard 3/3"):
        _run(tmp_path, corpus, shard="3/3")


def test_shards_dedup_within_a_shard_and_a_second_pass_across(tmp_path, shared_data):
    """What the README and --help say: a sentence in documents of two shards stays in both
    shards' train.txt, always on the same side of the held-out split (the split hashes the
    sentence), and one more ``data prepare`` over the shards' train.txt removes it."""
    corpus = (shared_data / "corpus" / "wiki1m-head.txt").read_text().splitlines()[:60]
    corpus += corpus[1:31]  # documents 60..89 repeat 1..30: each in the other shard
    opts = {"split": "none", "near_dup": False, "validation": 0.2}
    (tmp_path / "docs.txt").write_text("\n".join(corpus) + "\n")
    train, held = [], []
    for i in range(2):
        prepare(
            PrepareConfig(
                [str(tmp_path / "docs.txt")], str(tmp_path / "out"), shard=f"{i}/2", **opts
            )
        )
        folder = tmp_path / f"out.shard-{i}-of-2"
        train.append((folder / "train.txt").read_text().splitlines())
        held.append((folder / "validation.txt").read_text().splitlines())
    across = set(train[0]) & set(train[1])
    assert across and not (set(train[0]) | set(train[1])) & (set(held[0]) | set(held[1]))
    files = [str(tmp_path / f"out.shard-{i}-of-2" / "train.txt") for i in range(2)]
    cfg = PrepareConfig(input=files, output=str(tmp_path / "all"), split="none", near_dup=False)
    report = prepare(cfg)
    merged = (tmp_path / "all" / "train.txt").read_text().splitlines()
    assert report["counts"]["exact_duplicates"] == len(across)
    assert sorted(merged) == sorted(set(train[0]) | set(train[1]))


def test_table_input_and_documents_output(tmp_path):
    rows = [" ".join(["word"] * 50) + f" doc {i}." for i in range(3)] + [None, "short one here."]
    pq.write_table(pa.table({"id": list(range(5)), "body": rows}), tmp_path / "d.parquet")
    out = tmp_path / "o"
    cfg = PrepareConfig(
        input=[str(tmp_path / "d.parquet")],
        output=str(out),
        columns={"text": "body"},
        documents=True,
        documents_min_words=20,
        near_dup=False,
    )
    c = prepare(cfg)["counts"]
    assert c["documents"] == 4  # the null cell is a counted skip of the reader
    assert c["documents_train"] == 3 and c["documents_too_short"] == 1
    assert len((out / "documents.txt").read_text().splitlines()) == 3


def _jaccard(a: str, b: str) -> float:
    sa, sb = ({t[i : i + 5] for i in range(len(t) - 4)} for t in (normalize(a), normalize(b)))
    return len(sa & sb) / len(sa | sb)


def test_near_duplicate_threshold():
    assert _jaccard(f"The {LONG}.", f"The {LONG} today.") > 0.9
    assert _jaccard(f"The {LONG}.", LONG.replace("library", "park").replace("long", "short")) < 0.7
    near = NearDedup(window=10, threshold=0.8)
    assert not near.seen(normalize(f"The {LONG}."))
    assert near.seen(normalize(f"the {LONG}"))  # identical after normalisation
    assert not near.seen(LONG.replace("library", "park").replace("long", "short"))
    assert not near.seen(normalize("a completely different sentence about the weather today"))


def test_cli_runs_and_names_a_missing_input(tmp_path):
    src = tmp_path / "d.txt"
    src.write_text("\n".join(DOCS) + "\n")
    cli = [sys.executable, "-m", "contrasent.cli.main", "data", "prepare"]
    done = subprocess.run(
        [*cli, str(src), "--output", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "exact_duplicates: 1" in done.stdout
    bad = subprocess.run([*cli, "nope.txt", "--output", "o"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope.txt: no such file" in bad.stderr


def test_language_and_token_filters(tmp_path, minilm_dir):
    docs = [
        "The weather was mild and the harvest came in early this year.",
        "Le temps était doux et la récolte est arrivée tôt cette année.",
        "Supercalifragilisticexpialidocious words tokenize into many pieces here.",
    ]
    report, lines = _run(tmp_path, docs, lang_filter=True, near_dup=False)
    assert report["counts"]["documents_other_language"] == 1 and len(lines) == 2
    # the third sentence has 8 words but many more word pieces
    report, lines = _run(
        tmp_path, docs[::2], tokenizer=str(minilm_dir), max_tokens=13, name="tok", near_dup=False
    )
    assert report["counts"]["too_many_tokens"] == 1 and lines == docs[:1]


def test_duplicate_state_is_bounded():
    """Two generations of `window` entries at most; a duplicate within the window is found."""
    import random

    from contrasent.data.dedup import ExactDedup

    rng = random.Random(0)
    words = [("".join(rng.choice("abcdefghij") for _ in range(6))) for _ in range(400)]
    texts = [" ".join(rng.sample(words, 8)) for _ in range(50)]  # unrelated "sentences"
    exact, near = ExactDedup(window=10), NearDedup(window=10)
    for t in texts:
        assert not exact.seen(t) and not near.seen(t)
        assert len(exact.current) <= 10 and len(exact.previous) <= 10
        assert near.count <= 10
    assert exact.seen(texts[-5]) and near.seen(texts[-5])
    assert not exact.seen(texts[0])  # forgotten: beyond two windows
