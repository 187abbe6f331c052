"""The TSDAE objective on the shared loop: its loss is tsdae_parts' reconstruction loss, its noise
is keyed per row (resume, processes and gradient-cache chunks all see the same damaged text),
the gradient cache and two processes equal the plain step, bad input fails early and clearly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors import safe_open

from conftest import gloo_group
from contrasent.augment.text_noise import split_words
from contrasent.core import distributed as D
from contrasent.core.errors import UserError
from contrasent.data.batches import SentenceBatch
from contrasent.data.registry import DataSpec
from contrasent.model.encoder import Encoder
from contrasent.objectives import build_objective, objective_config
from contrasent.objectives.tsdae import TSDAE
from contrasent.objectives.tsdae_parts import (
    reconstruction_loss_mean,
    reconstruction_row_losses,
    tokenize_targets,
)
from contrasent.train import checkpoint as ckpt
from contrasent.train.config import (
    CheckpointConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from contrasent.train.gradcache import gradcache_step
from contrasent.train.loop import train
from test_resume import SAVE_EVERY, STEPS, Killed, _assert_bitwise, _kill_after, _state

TEXTS = ["a man is playing a guitar on the stage tonight", "the cat sleeps on the warm mat",
         "stocks fell sharply today after the report", "she is reading a long book",
         "the children walked to school in the rain", "paris is the capital of france",
         "he cooked pasta with fresh tomatoes", "a dog chased the ball across the park"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: thread start-up dominates their ops, and on a shared CPU two threads per
    process wait on each other (measured 20x slower under load); results are the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(path: Path, double: bool = False, **options) -> tuple[Encoder, TSDAE]:
    """Encoder + TSDAE objective with dropout off (float64 for the equality tests)."""
    torch.manual_seed(0)  # the decoder-only weights (cross-attention) start equal everywhere
    enc = Encoder.from_pretrained(path, pooling="cls_before_pooler", device="cpu")
    if double:
        enc = enc.double()
    obj = build_objective("tsdae", enc, **options)
    return enc.eval(), obj.eval()


def grads(enc: Encoder, obj: TSDAE) -> dict[str, torch.Tensor]:
    named = [*enc.named_parameters(), *(("obj." + n, p) for n, p in obj.named_parameters())]
    return {n: p.grad.detach().clone() for n, p in named if p.grad is not None}


# ---------------------------------------------------------------- wiring
def test_loss_is_the_reconstruction_loss_of_noisy_input_and_original_target(tiny_bert_dir):
    enc, obj = make(tiny_bert_dir, max_target_length=10)
    batch = SentenceBatch(TEXTS, index=3)
    (view,) = obj.views(batch)
    assert view.targets == TEXTS and view.texts != TEXTS  # damaged inputs, original targets
    record = obj(enc, batch)
    record["loss"].backward()
    ours = grads(enc, obj)
    enc.zero_grad(), obj.zero_grad()

    # by hand: encoder on the damaged texts, decoder on the originals (cut at 10 tokens)
    targets, cut = tokenize_targets(enc.tokenizer, TEXTS, 10)
    ref = reconstruction_loss_mean(obj.decoder, enc(enc.tokenize(view.texts)), targets)
    ref.backward()
    assert record["reconstruction"].item() == pytest.approx(ref.item(), rel=1e-6)
    assert record["loss"].item() == pytest.approx(ref.item(), rel=1e-6)
    assert record["targets_truncated"].item() == pytest.approx(cut.float().mean().item())
    assert 0 < record["targets_truncated"].item() < 1
    hand = grads(enc, obj)
    assert ours.keys() == hand.keys() and any(k.startswith("obj.decoder.own.") for k in ours)
    for k, g in hand.items():
        torch.testing.assert_close(ours[k], g, atol=1e-6, rtol=1e-4, msg=k)


def test_rows_are_independent(tiny_bert_dir):
    """Row i of the view's output depends on sentence i alone (what chunking relies on)."""
    enc, obj = make(tiny_bert_dir, double=True)
    (view,) = obj.views(SentenceBatch(TEXTS, index=1))
    with torch.no_grad():
        whole = obj.embed(enc, view, enc.tokenize(view.texts))
        parts = [obj.embed(enc, view.slice(i, i + 1), enc.tokenize(view.texts[i : i + 1]))
                 for i in range(len(TEXTS))]  # fmt: skip
    assert whole.shape == (len(TEXTS), 3)
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-9, rtol=1e-9)


def test_noise_is_keyed_by_row_not_by_batch_layout(tiny_bert_dir):
    _, obj = make(tiny_bert_dir)
    batch = SentenceBatch(TEXTS, index=7)
    whole = obj.views(batch)[0]
    halves = [obj.views(batch.slice(a, a + 4))[0] for a in (0, 4)]  # two processes' slices
    assert whole.texts == halves[0].texts + halves[1].texts
    assert whole.slice(2, 5).texts == whole.texts[2:5] and whole.slice(2, 5).targets == TEXTS[2:5]
    assert obj.views(batch)[0].texts == whole.texts  # a resume draws it again the same
    other_batch = obj.views(dataclasses.replace(batch, index=8))[0].texts
    other_seed = build_objective("tsdae", seed=1)  # deletion needs no model: no setup
    assert other_batch != whole.texts
    assert other_seed.views(batch)[0].texts != whole.texts


def test_deletion_rate_and_one_word_sentences(tiny_bert_dir, shared_data):
    """The default deletes 60% of words (the paper; not sentence-transformers' docstring's
    40%), and a one-word sentence keeps its word."""
    _, obj = make(tiny_bert_dir)
    lines = (shared_data / "corpus" / "wiki1m-head.txt").read_text().splitlines()[:4000]
    lines = [t for t in lines if t.strip()]
    noisy = obj.views(SentenceBatch(lines, index=0))[0].texts
    before = sum(len(split_words(t)) for t in lines)
    after = sum(len(split_words(t)) for t in noisy)
    assert 1 - after / before == pytest.approx(0.6, abs=0.01)
    words = ["hello", "Paris", "42", "..."]
    assert obj.views(SentenceBatch(words, index=0))[0].texts == words


# ---------------------------------------------------------------- gradient cache, processes
def run_steps(tiny: str, rows: slice, mini_batch: int | None, buckets: int = 1):
    """Loss record and gradients (encoder + decoder-only parameters, averaged over processes)
    of the global batch's ``rows`` (dropout off, float64), plain or under the gradient cache
    (``buckets`` > 1: its mini-batches of rows sorted by length, damaged texts and targets)."""
    enc, obj = make(Path(tiny), double=True, max_target_length=10)
    enc.length_buckets = buckets
    batch = SentenceBatch(TEXTS, index=5).slice(rows.start, rows.stop)
    if mini_batch is None:
        record = obj(enc, batch)
        record["loss"].backward()
    else:
        record = gradcache_step(enc, obj, batch, mini_batch)
    D.average_gradients([*enc.parameters(), *obj.parameters()])
    return {k: v.detach() for k, v in record.items()}, grads(enc, obj)


def assert_same(a, b, tol: float = 1e-9) -> None:
    (parts_a, grads_a), (parts_b, grads_b) = a, b
    for k in ("loss", "reconstruction", "targets_truncated"):
        assert parts_a[k].item() == pytest.approx(parts_b[k].item(), rel=tol), k
    assert grads_a.keys() == grads_b.keys()
    for k, g in grads_b.items():
        torch.testing.assert_close(grads_a[k], g, atol=1e-12, rtol=1e-8, msg=k)


def test_gradient_cache_equals_plain_step(tiny_bert_dir):
    plain = run_steps(str(tiny_bert_dir), slice(0, 8), None)
    assert plain[0]["targets_truncated"].item() > 0  # the cut is counted in both paths
    assert_same(run_steps(str(tiny_bert_dir), slice(0, 8), 3), plain)
    assert_same(run_steps(str(tiny_bert_dir), slice(0, 8), 3, buckets=3), plain)


def _worker(rank: int, world: int, tiny: str, out: str) -> None:
    with gloo_group(rank, world, out):
        half = len(TEXTS) // world
        rows = slice(rank * half, (rank + 1) * half)
        results = {}
        for name, mini in (("plain", None), ("cache", 3)):
            parts, g = run_steps(tiny, rows, mini)
            for v in parts.values():  # the loop logs the mean over processes
                dist.all_reduce(v)
                v /= world
            results[name] = (parts, g)
        torch.save(results, Path(out) / f"rank{rank}.pt")


def test_two_processes_equal_one_process(tiny_bert_dir, tmp_path):
    """Half the batch on each of 2 gloo processes (plain, and under the cache with 3 rows a
    pass) == one process with the whole batch: keyed noise, global token normalisation."""
    mp.spawn(_worker, args=(2, str(tiny_bert_dir), str(tmp_path)), nprocs=2)
    one = run_steps(str(tiny_bert_dir), slice(0, 8), None)
    for r in range(2):
        results = torch.load(tmp_path / f"rank{r}.pt")
        for name in ("plain", "cache"):
            assert_same(results[name], one)


# ---------------------------------------------------------------- runs
def _run_config(model: Path, data: Path, out: Path, **train_opts) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(str(model), pooling="cls_before_pooler", max_seq_length=24),
        objective={"name": "tsdae", "max_target_length": 24},
        data=DataSpec(kind="text", path=str(data), shuffle_buffer=500),
        train=OptimConfig(batch_size=8, max_steps=STEPS, lr=3e-4, warmup_steps=2, **train_opts),
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=SAVE_EVERY, keep_last=2),
        logging=LoggingConfig(log_every=1, tensorboard=False, progress_bar=False),
        output_dir=str(out),
    )


@pytest.fixture(scope="module")
def wiki(shared_data: Path) -> Path:
    return shared_data / "corpus" / "wiki1m-head.txt"


def _keys(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_resume_is_exact_and_only_the_encoder_is_saved(tmp_path, tiny_bert_dir, wiki):
    """Killed after step 4 and resumed from the step-3 checkpoint: bitwise equal to a straight
    run (dropout on in encoder and decoder, noise keyed; the decoder's own weights are in the
    checkpoint). The saved model holds exactly the starting model's tensors."""
    straight = _run_config(tiny_bert_dir, wiki, tmp_path / "straight")
    train(straight)
    cfg = _run_config(tiny_bert_dir, wiki, tmp_path / "resumed")
    with pytest.raises(Killed):
        train(cfg, callbacks=[_kill_after(SAVE_EVERY + 1)])
    assert [p.name for p in ckpt.list_checkpoints(cfg.output_dir)] == [f"step-{SAVE_EVERY:08d}"]
    train(dataclasses.replace(cfg, resume_from="latest"))
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    _assert_bitwise(a, b)
    assert any(k.startswith("objective.decoder.own.") for k in a)
    final = tmp_path / "straight" / "final" / "model.safetensors"
    assert _keys(final) == _keys(tiny_bert_dir / "model.safetensors")


# ---------------------------------------------------------------- bad input
def test_bad_options_are_one_clear_line():
    with pytest.raises(UserError, match="option noise must be one of 'delete', 'swap'"):
        objective_config("tsdae", {"noise": "drop"})
    with pytest.raises(UserError, match=r"noise_ratio must be in \[0, 1\], got 1.5"):
        objective_config("tsdae", {"noise_ratio": 1.5})
    with pytest.raises(UserError, match="set tie_decoder false"):
        objective_config("tsdae", {"decoder_name_or_path": "bert-base-uncased"})
    with pytest.raises(UserError, match="needs decoder_name_or_path"):
        objective_config("tsdae", {"tie_decoder": False})
    with pytest.raises(UserError, match="did you mean noise_ratio"):
        objective_config("tsdae", {"noise_rate": 0.5})
    assert build_objective("tsdae", noise="add").noise == "insert"


def test_target_length_beyond_the_decoder_is_refused(tiny_bert_dir):
    with pytest.raises(UserError, match=r"max_target_length 300 exceeds .* \(128 tokens\)"):
        make(tiny_bert_dir, max_target_length=300)  # tiny BERT: 128 positions


def test_other_noises_run(tiny_bert_dir):
    for noise in ("swap", "mask", "replace", "insert"):
        enc, obj = make(tiny_bert_dir, noise=noise, noise_ratio=0.5)
        (view,) = obj.views(SentenceBatch(TEXTS, index=0))
        assert view.texts != TEXTS and view.targets == TEXTS, noise
        if noise == "mask":
            assert "[MASK]" in " ".join(view.texts)
        assert torch.isfinite(obj(enc, SentenceBatch(TEXTS))["loss"])


def _lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{t}\n" for t in lines))
    return path


def test_bad_corpora_fail_before_training_or_are_counted(tmp_path, tiny_bert_dir):
    empty = _lines(tmp_path / "empty.txt", ["", "   "])
    with pytest.raises(UserError, match="empty.txt: no usable rows .*empty line: 2"):
        train(_run_config(tiny_bert_dir, empty, tmp_path / "a"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a good line\nbad \xff\xfe bytes\nanother good line\n")
    with pytest.raises(UserError, match=r"bad.txt:2"):
        train(_run_config(tiny_bert_dir, bad, tmp_path / "b"))
    assert not (tmp_path / "b" / "checkpoints").exists()
    # one-word sentences and one far longer than the model (128 positions): they train, the
    # cut target is counted and logged
    words = ["word", "x", "Paris", "42", "...", "hello", "again", "more"] * 2
    long = " ".join(["word"] * 600)
    odd = _lines(tmp_path / "odd.txt", [*words, long] * 2)
    cfg = _run_config(tiny_bert_dir, odd, tmp_path / "c")
    cfg = dataclasses.replace(cfg, checkpoint=CheckpointConfig(every_steps=0))
    cfg.train.max_steps = 4
    cfg.objective = {"name": "tsdae", "max_target_length": 128}
    cfg.data.shuffle_buffer = 0
    result = train(cfg)
    records = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    cut = [r["targets_truncated"] for r in records if r["kind"] == "train"]
    assert result.steps == 4 and cut == [0.0, 0.0, 1 / 8, 0.0]  # batch 3 holds the long line


def test_models_the_decoder_cannot_use_fail_before_training(tmp_path, minilm_dir, wiki):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    distil = tmp_path / "distil"
    DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2,
                                     hidden_dim=64)).save_pretrained(distil)  # fmt: skip
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(distil)
    with pytest.raises(UserError, match=r"distil.*\(distilbert\) has no causal-LM class"):
        train(_run_config(distil, wiki, tmp_path / "a"))
    assert not (tmp_path / "a" / "checkpoints").exists()
    assert not (tmp_path / "a" / "final").exists()

    no_start = word_level_bert(tmp_path / "nostart", 0, start_token=False)  # "$A [SEP]"
    with pytest.raises(UserError, match="adds no start token"):
        train(_run_config(no_start, wiki, tmp_path / "b"))
    assert not (tmp_path / "b" / "final").exists()


# ---------------------------------------------------------------- learning signal
TOPICS = np.array([f"{a}{b}" for a in "bcdfghjklmnprstv" for b in ("ar", "el", "ix", "on", "um",
                   "ay", "eb", "oz")]).reshape(16, 8)  # fmt: skip


def topic_sentences(n: int, seed: int) -> list[str]:
    """6-10 words drawn from one of 16 topics of 8 made-up words each."""
    r = np.random.default_rng(seed)
    return [" ".join(r.choice(TOPICS[r.integers(16)], size=r.integers(6, 11))) for _ in range(n)]


def word_level_bert(path: Path, seed: int, start_token: bool = True) -> Path:
    """A tiny random BERT (2 layers, hidden 64) over a word-level tokenizer of the 128 topic
    words: a 133-way LM head keeps a training step at a few milliseconds. ``start_token``
    False: the tokenizer adds only [SEP] (as GPT-2-like ones add no start token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate([*specials, *TOPICS.flatten().tolist()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    single = "[CLS] $A [SEP]" if start_token else "$A [SEP]"
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    names = {f"{n}_token": f"[{n.upper()}]" for n in ("unk", "cls", "sep", "pad", "mask")}
    # a BertTokenizerFast rebuilds its [CLS] ... [SEP] template on loading: keep it generic
    cls = BertTokenizerFast if start_token else PreTrainedTokenizerFast
    cls(tokenizer_object=tok, model_max_length=64, **names).save_pretrained(path)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=128, max_position_embeddings=64)  # fmt: skip
    BertModel(cfg).save_pretrained(path)
    return path


def held_out_reconstruction(enc: Encoder, obj: TSDAE, texts: list[str]) -> tuple[float, float]:
    """(mean token loss, retrieval accuracy): for each damaged held-out sentence's vector, is
    its own original the target it reconstructs best among all of them? Only information that
    passes through the sentence vector can lift the accuracy above chance (1 / len(texts))."""
    enc.eval(), obj.eval()
    (view,) = obj.views(SentenceBatch(texts, index=10**6))
    with torch.no_grad():
        memory = enc(enc.tokenize(view.texts))
        targets, _ = tokenize_targets(obj.decoder.tokenizer, view.targets, 32)
        own = reconstruction_row_losses(obj.decoder, memory, targets)
        # losses[i, j]: target j reconstructed from sentence i's vector
        losses = torch.stack([
            reconstruction_row_losses(obj.decoder, m.expand_as(memory), targets)[:, 0]
            for m in memory
        ])  # fmt: skip
    accuracy = (losses.argmin(0) == torch.arange(len(texts))).float().mean().item()
    return (own[:, 0].sum() / own[:, 1].sum()).item(), accuracy


@pytest.mark.parametrize("seed", [0, 1])
def test_training_puts_the_sentence_into_its_vector(tmp_path, seed):
    """100 steps (batch 16, lr 3e-3, pooling cls_before_pooler) on 2,000 topic sentences. On 32
    held-out sentences the decoder then reconstructs each original best from its own damaged
    sentence's vector far above chance: the bottleneck carries the sentence (topic and words).
    A decoder that ignored the vector, read another row's, or an encoder that was not trained
    through it would stay at chance (teacher forcing alone lowers the loss, not the accuracy).

    Measured (this test's data, seeds 0-5): accuracy before 0.000-0.125, after 0.438-0.562;
    mean token loss 4.89-4.91 -> 2.25-2.33. Asserted: after >= 0.3 and >= before + 0.2, loss
    down by >= 1.5."""
    model = word_level_bert(tmp_path / "model", seed)
    corpus = _lines(tmp_path / "train.txt", topic_sentences(2000, seed=100))
    held_out = topic_sentences(32, seed=200)
    torch.manual_seed(seed)
    start = Encoder.from_pretrained(model, pooling="cls_before_pooler", device="cpu")
    loss0, acc0 = held_out_reconstruction(start, build_objective("tsdae", start), held_out)
    cfg = TrainConfig(
        model=ModelConfig(str(model), pooling="cls_before_pooler"),
        objective={"name": "tsdae"},
        data=DataSpec(kind="text", path=str(corpus)),
        train=OptimConfig(
            batch_size=16, max_steps=100, lr=3e-3, lr_schedule="constant", seed=seed
        ),  # fmt: skip
        eval=EvalConfig(every_steps=0, at_end=False),
        checkpoint=CheckpointConfig(every_steps=0),
        logging=LoggingConfig(log_every=50, tensorboard=False, progress_bar=False),
        output_dir=str(tmp_path / "out"),
    )
    objective = build_objective("tsdae")
    result = train(cfg, objective=objective)
    trained = Encoder.from_pretrained(result.final_dir, device="cpu")
    objective.decoder.tie(trained.model)  # the trained decoder-only weights + the saved encoder
    loss1, acc1 = held_out_reconstruction(trained, objective, held_out)
    assert acc1 >= 0.3 and acc1 >= acc0 + 0.2, (acc0, acc1)
    assert loss1 < loss0 - 1.5, (loss0, loss1)


def test_recipes_hold_the_paper_settings(monkeypatch):
    from contrasent.cli.main import parse_train_config

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    paper = parse_train_config(["configs/tsdae-bert-base.yaml"])
    t, o = paper.train, paper.objective
    assert paper.model.name_or_path == "bert-base-uncased"
    assert paper.model.pooling == "cls_before_pooler"  # the paper's [CLS] "as is"
    assert (t.batch_size, t.lr, t.lr_schedule, t.warmup_steps, t.warmup_ratio) == (
        8, 3e-5, "constant", 0, 0.0)  # fmt: skip
    assert t.weight_decay == 0.0 and paper.data.epochs == 1 and t.max_steps == 0
    assert not paper.eval.keep_best  # the reference reports the last model: final/
    assert (o["name"], o["noise"], o["noise_ratio"], o["tie_decoder"]) == (
        "tsdae", "delete", 0.6, True)  # fmt: skip
    cpu = parse_train_config(["configs/tsdae-cpu.yaml"])
    assert cpu.objective["name"] == "tsdae" and cpu.eval.at_start and cpu.eval.at_end
    assert cpu.model.pooling == "cls_before_pooler" and cpu.train.lr_schedule == "constant"
