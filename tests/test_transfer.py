"""SentEval transfer tasks: reading as SentEval does, task selection, errors, and agreement with
numbers SentEval itself computed on the same embeddings."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from contrasent.errors import UserError
from contrasent.eval import transfer
from contrasent.eval.transfer import evaluate_transfer, format_table, resolve_transfer_tasks
from contrasent.eval.transfer_data import load_transfer_task

# SentEval's published sizes of its downstream data
SIZES = {
    "MR": {"all": 10662},
    "CR": {"all": 3775},
    "SUBJ": {"all": 10000},
    "MPQA": {"all": 10606},
    "SST2": {"train": 67349, "dev": 872, "test": 1821},
    "TREC": {"train": 5452, "test": 500},
    "MRPC": {"train": 4076, "test": 1725},
    "SICKEntailment": {"train": 4500, "dev": 500, "test": 4927},
}


def hashed_encode(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), 32), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.encode()) % 32] += 1.0
    return out


@pytest.mark.parametrize("task", list(SIZES))
def test_real_data_sizes_and_senteval_order(senteval_dir: Path, task: str) -> None:
    data = load_transfer_task(senteval_dir, task)
    assert {k: len(v) for k, v in data.items()} == SIZES[task]
    for split in data.values():
        # SentEval sorts by (token count[, count of B], label) before folds are drawn
        key = [(len(t.split()), *(() if split.texts_b is None else (len(split.texts_b[i].split()),)), int(split.labels[i])) for i, t in enumerate(split.texts)]  # fmt: skip
        assert key == sorted(key)
        assert all(t == " ".join(t.split()) for t in split.sentences())


def test_reading_details(senteval_dir: Path) -> None:
    cr = load_transfer_task(senteval_dir, "CR")["all"]
    assert cr.texts.count("") == 4  # CR's empty lines stay (SentEval embeds them)
    trec = load_transfer_task(senteval_dir, "TREC")["train"]
    assert np.bincount(trec.labels).tolist() == [86, 1162, 1250, 1223, 835, 896]
    assert "How did serfdom develop in and then leave Russia ?" in trec.texts  # fine label dropped
    assert any("sister\u00f0city" in t for t in trec.texts)  # latin-1, as SentEval reads TREC
    mrpc = load_transfer_task(senteval_dir, "MRPC")["train"]
    assert "#1 String" not in mrpc.texts and len(mrpc) == 4076  # header skipped
    assert mrpc.labels.sum() == 2753


def test_resolve_tasks() -> None:
    assert resolve_transfer_tasks(None) == list(transfer.TASKS)
    assert resolve_transfer_tasks("trec, mr,sst") == ["MR", "SST2", "TREC"]
    assert resolve_transfer_tasks("sick-e") == ["SICKEntailment"]
    with pytest.raises(UserError, match="unknown transfer task 'MRX'"):
        resolve_transfer_tasks("MR,MRX")


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def test_malformed_files_name_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "TREC/train_5500.label", "DESC:manner How ?\nBOGUS:x What ?\n")
    with pytest.raises(UserError, match=r"train_5500.label:2: expected 'COARSE:fine question'"):
        load_transfer_task(tmp_path, "TREC")
    for split in ("train", "dev"):
        write(tmp_path, f"SST/binary/sentiment-{split}", "good film\t1\n")
    write(tmp_path, "SST/binary/sentiment-test", "good\t1\nno label here\n")
    with pytest.raises(UserError, match=r"sentiment-test:2: expected 'sentence<TAB>0\|1'"):
        load_transfer_task(tmp_path, "SST2")
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    write(tmp_path, "MRPC/msr_paraphrase_train.txt", header + "1\t1\t2\ta\tb\n2\t1\t2\ta\tb\n")
    with pytest.raises(UserError, match=r"msr_paraphrase_train.txt:3: quality '2'"):
        load_transfer_task(tmp_path, "MRPC")
    with pytest.raises(UserError, match=r"MR: expected rt-polarity.pos at .*not found"):
        load_transfer_task(tmp_path, "MR")


def test_missing_file_fails_before_encoding(tmp_path: Path) -> None:
    def never(texts):
        raise AssertionError("no encoding before every file is read")

    with pytest.raises(UserError, match="TREC"):
        evaluate_transfer(never, tmp_path, tasks="TREC")


def test_result_layout_and_table(senteval_dir: Path) -> None:
    lines: list[str] = []
    res = evaluate_transfer(hashed_encode, senteval_dir, "fasttest", "MRPC", progress=lines.append)
    mrpc = res["tasks"]["MRPC"]
    assert res["classifier"]["optim"] == "rmsprop" and res["classifier"]["kfold"] == 5
    assert mrpc["kfold"] == 5 and mrpc["ndev"] == 4076 and mrpc["ntest"] == 1725
    assert 60 < mrpc["acc"] < 80 and 60 < mrpc["f1"] < 90 and len(mrpc["grid"]) == 4
    assert res["avg"] == mrpc["acc"]
    assert len(lines) == 2 and "MRPC" in lines[1] and "s" in lines[1]
    table = format_table(res)
    assert "MRPC" in table and f"{mrpc['acc']:.2f}" in table and "Avg." in table
    dev = evaluate_transfer(hashed_encode, senteval_dir, "dev", "MRPC")
    assert dev["tasks"]["MRPC"]["acc"] is None and dev["avg"] == dev["tasks"]["MRPC"]["devacc"]
    assert dev["tasks"]["MRPC"]["devacc"] == mrpc["devacc"]  # same classifier, same CV
