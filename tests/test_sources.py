"""Data as users have it: texts and pairs from JSONL/CSV/TSV columns, Parquet, a
``datasets.save_to_disk`` folder, an hf: id (offline: one clear error) and data passed from
Python; null/empty cells are counted skips; resume on Parquet and saved datasets is exact."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from contrasent.core.errors import UserError
from contrasent.data.readers import PairReader, ReadStats, read_texts
from contrasent.data.registry import DataSpec, build_stream
from contrasent.data.sources import open_table, register_memory
from contrasent.train.config import (
    CheckpointConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from contrasent.train.loop import train

N = 300  # rows of wiki1m-head used


@pytest.fixture(scope="module")
def lines(shared_data: Path) -> list[str]:
    with open(shared_data / "corpus" / "wiki1m-head.txt", encoding="utf-8") as fh:
        out = [line.strip() for _, line in zip(range(N), fh, strict=False)]
    return [t for t in out if t]


@pytest.fixture(scope="module")
def pairs(shared_data: Path) -> list[tuple[str, str]]:
    rows = (shared_data / "pairs" / "wiki-split-tune.tsv").read_text().splitlines()[:100]
    return [tuple(r.split("\t")[:2]) for r in rows]


def _sources(folder: Path, texts: list[str]) -> dict[str, tuple[str, dict | None]]:
    """The same texts (with a null and an empty cell inserted) in every format: name ->
    (path, columns)."""
    import datasets

    cells = [*texts[:5], None, "  ", *texts[5:]]
    ids = list(range(len(cells)))
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": ids, "body": cells}), folder / "t.parquet", row_group_size=64)
    with gzip.open(folder / "t.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(
            json.dumps({"id": i, "body": c}) + "\n" for i, c in zip(ids, cells, strict=False)
        )
    with open(folder / "t.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "body"])
        w.writerows([i, c or ""] for i, c in zip(ids, cells, strict=False))
    (folder / "s.jsonl").write_text("".join(json.dumps(c or "") + "\n" for c in cells))
    datasets.Dataset.from_dict({"id": ids, "body": cells}).save_to_disk(str(folder / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": cells})}).save_to_disk(
        str(folder / "dd")
    )
    body = {"text": "body"}
    return {
        "parquet": (str(folder / "t.parquet"), body),
        "jsonl.gz": (str(folder / "t.jsonl.gz"), body),
        "csv": (str(folder / "t.csv"), body),
        "jsonl strings": (str(folder / "s.jsonl"), None),
        "save_to_disk": (str(folder / "ds"), body),
        "DatasetDict@train": (str(folder / "dd") + "@train", None),
        "memory": (register_memory(cells), None),
    }


def test_texts_from_every_source(tmp_path, lines):
    for name, (path, columns) in _sources(tmp_path, lines).items():
        stats = ReadStats(path)
        got = list(read_texts(path, "raise", stats, "auto", columns))
        assert got == lines, name
        # the null and the whitespace cell are counted skips, not errors
        assert stats.skipped == {"empty or null text": 2}, (name, stats.skipped)
        assert stats.rows == len(lines)


def test_text_kind_stream_equals_txt(tmp_path, lines):
    """A text column streams the very batches the .txt file of the same lines gives."""
    txt = tmp_path / "t.txt"
    txt.write_text("\n".join(lines) + "\n")
    path, columns = _sources(tmp_path, lines)["parquet"]

    def batches(**kw):
        return [b.texts for b in build_stream(DataSpec(shuffle_buffer=50, **kw), 16, 3)]

    want = batches(path=str(txt))
    assert batches(path=path, columns=columns) == want
    assert batches(path=path, columns=columns, format="parquet") == want  # format accepted


def test_missing_column_names_the_existing_ones(tmp_path, lines):
    sources = _sources(tmp_path, lines)
    for name in ("parquet", "save_to_disk"):
        with pytest.raises(UserError, match=r"column 'text' not found \(columns: id, body\)"):
            list(read_texts(sources[name][0]))
    with pytest.raises(UserError, match=r"column 'sentence' not found \(columns: id, body\)"):
        PairReader(sources["parquet"][0], {"anchor": "sentence", "positive": "body"})


def test_pairs_from_parquet_datasets_and_memory(tmp_path, pairs):
    import datasets

    a, p = zip(*pairs, strict=False)
    pq.write_table(pa.table({"s1": a, "s2": p, "x": [None] + list(p[1:])}), tmp_path / "p.parquet")
    datasets.Dataset.from_dict({"s1": a, "s2": p}).save_to_disk(str(tmp_path / "pd"))
    columns = {"anchor": "s1", "positive": "s2"}
    for path in (tmp_path / "p.parquet", tmp_path / "pd"):
        assert list(PairReader(path, columns).rows()) == pairs
    # a null negative is an empty field: a counted skip
    stats = ReadStats("p")
    rows = list(PairReader(tmp_path / "p.parquet", {**columns, "negative": "x"}).rows(stats))
    assert len(rows) == len(pairs) - 1 and stats.skipped == {"empty anchor/positive/negative": 1}
    assert list(PairReader(register_memory(pairs)).rows()) == pairs
    with pytest.raises(UserError, match="give data.columns .* columns: s1, s2"):
        PairReader(tmp_path / "pd")


def test_hub_id_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        open_table("hf:no-such-org/no-such-set:en@train")
    assert time.monotonic() - start < 30  # no network timeout
    message = str(err.value)
    assert "'no-such-org/no-such-set'" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="expected hf:org/name"):
        open_table("hf:org/name@")


def test_check_paths_accepts_hub_ids_and_split_suffixes(tmp_path, lines):
    sources = _sources(tmp_path, lines)
    DataSpec(path="hf:org/name").check_paths()
    DataSpec(path=sources["DatasetDict@train"][0]).check_paths()
    with pytest.raises(UserError, match="no such file"):
        DataSpec(path=str(tmp_path / "nope.parquet")).check_paths()


# ----------------------------------------------------------------------------- resume

STEPS, SAVE_EVERY = 6, 3


class Killed(Exception):
    pass


def _config(tiny: Path, path: str, columns, out: Path) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(str(tiny), pooling="cls_before_pooler", max_seq_length=24),
        objective={"name": "simcse_unsup"},
        data=DataSpec(kind="text", path=path, columns=columns, shuffle_buffer=64),
        train=OptimConfig(batch_size=8, max_steps=STEPS, lr=3e-4, warmup_steps=2),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=SAVE_EVERY, keep_last=2),
        logging=LoggingConfig(log_every=1, tensorboard=False, progress_bar=False),
        output_dir=str(out),
    )


def _kill(step: int):
    def callback(s: int, record: dict) -> None:
        if s == step:
            raise Killed

    return callback


@pytest.mark.parametrize("source", ["parquet", "save_to_disk"])
def test_resume_is_exact_on_new_sources(tmp_path, tiny_bert_dir, lines, source):
    path, columns = _sources(tmp_path / "data", lines)[source]
    train(_config(tiny_bert_dir, path, columns, tmp_path / "straight"))
    cfg = _config(tiny_bert_dir, path, columns, tmp_path / "resumed")
    with pytest.raises(Killed):
        train(cfg, callbacks=[_kill(SAVE_EVERY + 1)])
    train(dataclasses.replace(cfg, resume_from="latest"))
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_table_rows_of_the_wrong_type_raise_or_are_counted(tmp_path):
    pq.write_table(
        pa.table({"body": ["a text", "another text"], "n": [1, 2]}), tmp_path / "b.parquet"
    )
    path = str(tmp_path / "b.parquet")
    with pytest.raises(UserError, match=r"b\.parquet:1: expected text"):
        list(read_texts(path, columns={"text": "n"}))
    stats = ReadStats(path)
    assert list(read_texts(path, "skip", stats, columns={"text": "n"})) == []
    assert stats.skipped == {"malformed row": 2}


def test_hf_id_streams_a_local_dataset_folder(tmp_path, lines):
    """hf: goes through datasets.load_dataset(streaming=True): a local folder of Parquet files
    (no hub needed) streams the same texts in the same order, every pass."""
    folder = tmp_path / "hub"
    folder.mkdir()
    pq.write_table(pa.table({"text": lines}), folder / "train.parquet")
    stats = ReadStats("hf")
    assert list(read_texts(f"hf:{folder}@train", "raise", stats)) == lines
    spec = DataSpec(path=f"hf:{folder}", shuffle_buffer=40)
    a = [b.texts for b in build_stream(spec, 16, 1)]
    stream = build_stream(spec, 16, 1)
    next(stream), next(stream)
    state = stream.state_dict()
    resumed = build_stream(spec, 16, 1)
    resumed.load_state_dict(state)
    assert [b.texts for b in resumed] == a[2:]


def test_mixture_entries_take_parquet_and_saved_datasets(tmp_path, pairs):
    import datasets

    a, p = zip(*pairs, strict=True)
    pq.write_table(pa.table({"q": a, "d": p}), tmp_path / "one.parquet")
    datasets.Dataset.from_dict({"q": a, "d": p}).save_to_disk(str(tmp_path / "two"))
    config = tmp_path / "data_config.json"
    config.write_text(
        json.dumps([{"path": "one.parquet", "weight": 1}, {"path": "two", "weight": 1}])
    )
    spec = DataSpec(
        kind="mixture", data_config=str(config), columns={"anchor": "q", "positive": "d"}
    )
    batch = next(build_stream(spec, 8, 0))
    assert set(batch.anchors) <= set(a) and len(batch.anchors) == 8


def test_iterable_dataset_from_python(lines):
    import datasets

    ds = datasets.Dataset.from_dict({"text": lines}).to_iterable_dataset()
    path = register_memory(ds)
    assert list(read_texts(path)) == lines
    assert list(read_texts(path)) == lines  # every pass (epoch) reads it again, same order
    assert register_memory(ds) == path  # same data, same fingerprint
