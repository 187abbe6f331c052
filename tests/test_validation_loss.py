"""``data.validation`` and ``validation_loss``: held-out rows are exact, deterministic and never
trained on; the loss goes down on a tiny learnable run of every objective, is the same number
when computed again at the same weights (and on the main process of two), leaves the training
run's randomness alone, and selects ``best/`` and drives patience with lower as better."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import gloo_group
from contrasent.core.errors import UserError
from contrasent.data.documents import read_documents
from contrasent.data.holdout import BLOCK, HOLD
from contrasent.data.registry import DataSpec, build_stream
from contrasent.eval.metric_paths import higher_is_better
from contrasent.train.config import TrainConfig
from contrasent.train.loop import train
from contrasent.train.runtime import build_module
from contrasent.train.validation import build_validation, validation_loss


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second thread only contends on the shared CPU; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory) -> Path:
    """300 distinct Wikipedia sentences, one a line (a text that appears in one row only)."""
    lines = (shared_data / "corpus" / "wiki1m-head.txt").read_text().splitlines()
    rows = list(dict.fromkeys(x.strip() for x in lines if x.strip()))[:300]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def documents(shared_data, tmp_path_factory) -> Path:
    """60 documents: 100-word windows of WikiText articles, one a line."""
    windows = read_documents(
        shared_data / "corpus" / "wikitext-2-raw-test.txt", "wikitext", window_words=100
    )
    path = tmp_path_factory.mktemp("docs") / "docs.txt"
    path.write_text("\n".join(d.text for _, d in zip(range(60), windows, strict=False)) + "\n")
    return path


# ---------------------------------------------------------------- the held-out rows
def test_held_out_rows_are_exact_deterministic_and_never_batched(corpus, caplog):
    all_rows = corpus.read_text().splitlines()

    def stream(validation, seed=7, **kw):
        spec = DataSpec(path=str(corpus), validation=validation, shuffle_buffer=1000, **kw)
        return build_stream(spec, 16, seed, None)

    s = stream(30, drop_last=False, epochs=2)
    held, read = s.sources[0].validation_rows()
    assert read == 300 and len(held) == 30 and len(set(held)) == 30
    assert s.steps_per_epoch == -(-270 // 16)  # the epoch counts the training rows only
    for epoch in range(2):
        seen = [t for b in [next(s) for _ in range(s.steps_per_epoch)] for t in b.texts]
        assert sorted(seen) == sorted(set(all_rows) - set(held)), epoch  # every other row, once
    # the same rows on every build (every process, every resume); another seed: other rows
    assert stream(30).sources[0].validation_rows()[0] == held
    assert set(stream(30, seed=8).sources[0].validation_rows()[0]) != set(held)
    # the rule: the 30 smallest keyed draws, in file order
    draws = np.random.default_rng(np.random.SeedSequence([7, HOLD, 0, 0])).random(BLOCK)[:300]
    assert held == [all_rows[i] for i in sorted(np.argsort(draws)[:30])]
    # a fraction of a scanned file is exact (round(0.1 * 300)) and the same ranking
    assert stream(0.1).sources[0].validation_rows()[0] == held
    # without a scan a fraction is drawn row by row: draw < 0.1
    free = stream(0.1, scan=False).sources[0].validation_rows()[0]
    assert free == [all_rows[i] for i in np.flatnonzero(draws < 0.1)]
    assert set(held) <= set(free) or set(free) <= set(held)  # one ranking, two cut-offs
    # a resume mid-epoch continues with the same batches, still without the held-out rows
    a = stream(30)
    for _ in range(5):
        next(a)
    b = stream(30)
    b.load_state_dict(a.state_dict())
    assert [x.texts for x in (next(a), next(a))] == [x.texts for x in (next(b), next(b))]
    assert a.fingerprint["validation"] == 30 and "validation" not in stream(None).fingerprint
    # the validation batches: the held-out rows in file order, fixed places, a short last batch
    with caplog.at_level(logging.INFO, logger="contrasent.train.validation"):
        vs = build_validation(DataSpec(path=str(corpus), validation=30), a, 16, 7, None)
    assert "validation: 30 rows held out of 300 (data.validation 30)" in caplog.text
    assert [b.texts for b in vs.batches] == [held[:16], held[16:]]
    assert [(b.index, b.offset) for b in vs.batches] == [(0, 0), (1, 0)]


def test_pairs_and_a_mixture_hold_out_of_each_dataset(shared_data, tmp_path):
    tune = str(shared_data / "pairs" / "wiki-split-tune.tsv")
    s = build_stream(DataSpec(kind="pairs", path=tune, validation=0.02), 64, 3, None)
    held, read = s.sources[0].validation_rows()
    assert (read, len(held), s.steps_per_epoch) == (5000, 100, 4900 // 64)
    batches = [next(s) for _ in range(s.steps_per_epoch)]
    trained = {row for b in batches for row in zip(b.anchors, b.positives, strict=True)}
    assert not {r[:2] for r in held} & trained and len(trained) > 4000

    config = tmp_path / "data_config.json"
    config.write_text(json.dumps([{"path": tune, "weight": 1},
                                  {"path": str(shared_data / "pairs" / "wiki-split-test.tsv"),
                                   "weight": 1}]))  # fmt: skip
    spec = DataSpec(kind="mixture", data_config=str(config), validation=31, epochs=None)
    m = build_stream(spec, 64, 3, None)
    counts = [len(src.validation_rows()[0]) for src in m.sources]
    assert counts == [16, 15]  # 31 over two datasets of 5000 rows: the remainder to one
    assert m.steps_per_epoch == (10000 - 31) // 64
    held = {r[:2] for src in m.sources for r in src.validation_rows()[0]}
    batches = [next(m) for _ in range(200)]  # more than an epoch of each dataset
    trained = {row for b in batches for row in zip(b.anchors, b.positives, strict=True)}
    assert not held & trained and len(trained) > 9000


# ---------------------------------------------------------------- the loss, per objective
def recipe(tiny: Path, out: Path, objective: str, data: dict, **kw) -> TrainConfig:
    base = {
        "model": {"name_or_path": str(tiny), "pooling": "mean", "max_seq_length": 32},
        "objective": {"name": objective},
        "data": {"max_seq_length": 32, "shuffle_buffer": 1000, **data},
        "train": {"batch_size": 16, "max_steps": 10, "lr": 1e-3},
        "eval": {"at_start": True, "metric": "validation_loss"},
        "checkpoint": {"every_steps": 0},
        "logging": {"tensorboard": False, "progress_bar": False},
        "output_dir": str(out),
    }
    for section, values in kw.items():
        base[section] = {**base[section], **values}
    return TrainConfig.from_dict(base)


def evals(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "eval"]


SETUPS = {  # objective -> data (beside validation), train overrides
    "simcse_unsup": ({"kind": "text"}, {}),
    "pairs": ({"kind": "pairs"}, {}),
    "tsdae": ({"kind": "text"}, {"lr": 3e-3}),
    "declutr": ({"kind": "documents", "options": {"min_span_len": 6, "max_span_len": 16}},
                {"batch_size": 4}),
    "consert": ({"kind": "text"}, {}),
}  # fmt: skip


@pytest.mark.parametrize("objective", list(SETUPS))
def test_validation_loss_falls_and_is_the_same_number_twice(
    objective, tiny_bert_dir, corpus, documents, shared_data, tmp_path
):
    """10 steps from the tiny random BERT, held-out loss at step 0 -> 10 (measured): simcse_unsup
    1.43 -> 0.009 (dropout off: its two views coincide, so this is in-batch separation alone),
    pairs 2.37 -> 1.30, tsdae 10.34 -> 9.89, declutr 12.59 -> 11.95, consert 3.00 -> 1.93. A
    fresh build of the same run's module gives the logged step-0 float again, twice."""
    data, opts = SETUPS[objective]
    path = {"text": corpus, "documents": documents}.get(data["kind"])
    path = path or shared_data / "pairs" / "wiki-split-tune.tsv"
    held = 8 if objective == "declutr" else 48
    cfg = recipe(tiny_bert_dir, tmp_path, objective, {**data, "path": str(path),
                 "validation": held}, train=opts)  # fmt: skip
    train(cfg)
    (start, end) = evals(tmp_path)
    assert (start["step"], end["step"]) == (0, 10)
    assert end["validation_loss"] < start["validation_loss"], (start, end)

    # the same weights (a fresh build: same seed, same heads): the same float, every time
    module, _ = build_module(cfg, torch.device("cpu"), None)
    t = cfg.train
    stream = build_stream(cfg.data, t.batch_size, t.seed, module.encoder.tokenizer)
    vs = build_validation(cfg.data, stream, t.batch_size, t.seed, module.encoder.tokenizer)
    assert vs.rows == held
    rng = torch.get_rng_state()
    module.train()
    first = validation_loss(module, vs.batches, vs.seed)
    assert torch.equal(torch.get_rng_state(), rng) and module.training  # both restored
    assert validation_loss(module, vs.batches, vs.seed) == first == start["validation_loss"]


def test_validation_never_changes_the_training_run(
    tiny_bert_dir, shared_data, corpus, tmp_path, caplog
):
    """A validation FILE holds nothing out: with it (evaluated every 2 steps) the ConSERT run,
    whose embedding-level views draw from torch's global generator in training and validation
    alike, ends bitwise equal to the same run without it: the validation pass's draws are forked
    away (without the fork this test fails)."""
    val = tmp_path / "val.txt"
    lines = (shared_data / "corpus" / "wiki1m-head.txt").read_text().splitlines()
    val.write_text("\n".join([x for x in lines if x.strip()][-40:]) + "\n")
    common = dict(train={"max_steps": 4}, eval={"every_steps": 2, "metric": "stsb"})
    with caplog.at_level(logging.INFO, logger="contrasent.train.validation"):
        a = train(recipe(tiny_bert_dir, tmp_path / "a", "consert",
                         {"path": str(corpus), "validation": str(val)}, **common))  # fmt: skip
    assert f"validation: 40 rows of {val}" in caplog.text
    b = train(recipe(tiny_bert_dir, tmp_path / "b", "consert", {"path": str(corpus)}, **common))
    wa, wb = (load_file(r.final_dir / "model.safetensors") for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["step"] for r in evals(tmp_path / "a")] == [0, 2, 4]
    assert all(r["validation_loss"] > 0 for r in evals(tmp_path / "a"))
    assert all("validation_loss" not in r for r in evals(tmp_path / "b"))


def test_lowest_validation_loss_is_best_and_patience_counts_on_it(tiny_bert_dir, corpus, tmp_path):
    """ConSERT at a high learning rate, evaluated every step: the held-out loss falls, then
    wobbles (measured 2.98, 1.66, 1.21, 1.09, 0.96, 0.72, 0.52, 0.41, 0.394, 0.410, 0.397):
    best/ is the argmin (step 8), and 2 evaluations without a lower loss stop the run."""
    cfg = recipe(tiny_bert_dir, tmp_path, "consert", {"path": str(corpus), "validation": 0.2},
                 train={"lr": 1e-2, "max_steps": 12}, eval={"every_steps": 1, "patience": 2})  # fmt: skip
    result = train(cfg)
    losses = [r["validation_loss"] for r in evals(tmp_path)]
    assert [r["metric"] for r in evals(tmp_path)] == losses
    best = int(np.argmin(losses))
    assert (result.best_step, result.best_metric) == (best, losses[best])
    assert result.stopped_early and result.steps == best + 2 < 12 and len(losses) == best + 3
    assert not higher_is_better("validation_loss") and higher_is_better("stsb")
    final, kept = (load_file(d / "model.safetensors") for d in (result.final_dir, result.best_dir))
    assert any(not torch.equal(final[k], kept[k]) for k in final)  # best/ is the earlier step


def test_a_resume_holds_out_the_same_rows_and_ends_bitwise_equal(tiny_bert_dir, corpus, tmp_path):
    """Killed after step 4, resumed from the step-3 checkpoint: the same held-out rows (the
    epoch's fast-forward and the validation batches are built again), the same final weights,
    the same validation losses; a changed data.validation cannot resume that stream."""
    from test_resume import SAVE_EVERY, STEPS, Killed, _assert_bitwise, _kill_after, _state

    def cfg(out: str, validation=0.1) -> TrainConfig:
        return recipe(tiny_bert_dir, tmp_path / out, "simcse_unsup",
                      {"path": str(corpus), "validation": validation},
                      train={"max_steps": STEPS, "batch_size": 8},
                      eval={"every_steps": 2, "metric": "validation_loss"},
                      checkpoint={"every_steps": SAVE_EVERY, "keep_last": 3})  # fmt: skip

    train(cfg("straight"))
    with pytest.raises(Killed):
        train(cfg("resumed"), callbacks=[_kill_after(4)])
    train(dataclasses.replace(cfg("resumed"), resume_from="latest"))
    _assert_bitwise(_state(tmp_path / "straight"), _state(tmp_path / "resumed"))
    losses = [[(r["step"], r["validation_loss"]) for r in evals(tmp_path / d)]
              for d in ("straight", "resumed")]  # fmt: skip
    assert losses[0] == losses[1] and [s for s, _ in losses[0]] == [0, 2, 4, 6]
    with pytest.raises(UserError, match=r"validation: saved 0.1, now 0.2"):
        train(dataclasses.replace(cfg("resumed", 0.2), resume_from="latest"))


# ---------------------------------------------------------------- two processes
def _worker(rank: int, world: int, cfgs: list[TrainConfig], folder: str) -> None:
    with gloo_group(rank, world, folder):
        for i, cfg in enumerate(cfgs):
            module, _ = build_module(cfg, torch.device("cpu"), None)
            if rank == 0:  # as Selection.evaluate: the main process alone, the other waits
                t = cfg.train
                tok = module.encoder.tokenizer
                stream = build_stream(cfg.data, t.batch_size, t.seed, tok)
                vs = build_validation(cfg.data, stream, t.batch_size, t.seed, tok, chunk=8)
                loss = validation_loss(module, vs.batches, vs.seed, vs.chunk)
                (Path(folder) / f"loss{i}").write_text(repr(loss))
            torch.distributed.barrier()


def test_main_process_computes_it_alone_under_two_processes(
    tiny_bert_dir, corpus, shared_data, tmp_path
):
    """The gathers (pairs) and reductions (TSDAE's token count) are local while the other process
    waits: no deadlock, and the one-process number of each global batch (here in passes of 8
    rows, one process's share, as the loop runs it)."""
    pairs = str(shared_data / "pairs" / "wiki-split-tune.tsv")
    cfgs = [recipe(tiny_bert_dir, tmp_path / "o", "pairs", {"kind": "pairs", "path": pairs, "validation": 40}),
            recipe(tiny_bert_dir, tmp_path / "o", "tsdae", {"path": str(corpus), "validation": 40})]  # fmt: skip
    mp.spawn(_worker, args=(2, cfgs, str(tmp_path)), nprocs=2, join=True)
    for i, cfg in enumerate(cfgs):
        module, _ = build_module(cfg, torch.device("cpu"), None)
        t = cfg.train
        stream = build_stream(cfg.data, t.batch_size, t.seed, module.encoder.tokenizer)
        vs = build_validation(cfg.data, stream, t.batch_size, t.seed, module.encoder.tokenizer)
        alone = validation_loss(module, vs.batches, vs.seed)
        assert float((tmp_path / f"loss{i}").read_text()) == pytest.approx(alone, rel=1e-5)


# ---------------------------------------------------------------- mistakes
@pytest.mark.parametrize("value", [0, 1.5, -3, 1.0, True, ""])
def test_bad_values_are_one_line(value, corpus):
    with pytest.raises(UserError, match=r"^data.validation must be ") as err:
        TrainConfig.from_dict({"model": {"name_or_path": "m"}, "data": {"path": str(corpus),
                               "validation": value}}).validate()  # fmt: skip
    assert "\n" not in str(err.value)


def test_other_mistakes_are_one_clear_line(corpus, tiny_bert_dir, tmp_path):
    def one_line(match: str, call) -> None:
        with pytest.raises(UserError, match=match) as err:
            call()
        assert "\n" not in str(err.value)

    missing = DataSpec(path=str(corpus), validation=str(tmp_path / "nope.txt"))
    one_line(r"^data.validation .*nope.txt: no such file", missing.check_paths)
    run = recipe(tiny_bert_dir, tmp_path / "r", "simcse_unsup", {"path": str(corpus),
                 "validation": str(tmp_path / "nope.txt")})  # fmt: skip
    one_line(r"nope.txt: no such file", lambda: train(run))
    one_line(
        r"^data.validation 50 is a row count.*data.scan: true.*fraction",
        lambda: build_stream(DataSpec(path=str(corpus), validation=50, scan=False), 16, 0),
    )
    one_line(
        r"holds out 300 of the 300 training rows",
        lambda: build_stream(DataSpec(path=str(corpus), validation=300), 16, 0),
    )
    no_val = recipe(tiny_bert_dir, tmp_path / "s", "simcse_unsup", {"path": str(corpus)})
    one_line(r"^eval.metric validation_loss needs held-out data: set data.validation",
             lambda: no_val.validate())  # fmt: skip


def test_eval_off_warns_once(tiny_bert_dir, corpus, tmp_path, caplog):
    cfg = recipe(tiny_bert_dir, tmp_path, "simcse_unsup", {"path": str(corpus), "validation": 0.1},
                 train={"max_steps": 2}, eval={"at_start": False, "at_end": False, "metric": "stsb"})  # fmt: skip
    with caplog.at_level(logging.WARNING):
        train(cfg)
    assert caplog.text.count("data.validation is set but evaluation is off") == 1


def test_the_command_line_reads_numbers_and_files():
    from contrasent.cli.parse import parse_args

    for text, value in (("0.1", 0.1), ("200", 200), ("val.txt", "val.txt"), ("null", None)):
        cfg, _ = parse_args(TrainConfig, ["--data.validation", text])
        assert cfg.data.validation == value and type(cfg.data.validation) is type(value)
    assert TrainConfig.from_dict({"data": {"validation": 200}}).data.validation == 200
