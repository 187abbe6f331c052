"""A second real checkpoint: sentence-transformers' all-mpnet-base-v2 (MPNet, 110M parameters).

Slow tests (``-m slow``), skipped unless ``python bench/fetch_mpnet.py`` has put the model in its
cache folder (``~/.cache/contrasent/models/all-mpnet-base-v2``, or ``$CONTRASENT_MPNET``):

- ``contrasent eval`` on the 7 STS tasks equals sentence-transformers' own encode of the same
  model, task by task;
- ``pairs`` fine-tuning from it on wiki-split runs, and its saved folder loads in
  sentence-transformers with the embeddings our encoder gives;
- the ONNX export (fp32 and int8) matches the torch model (fp32) or loses little (int8).

On a busy CPU these take long (MPNet embeds a few sentences per second there): environment
variables cut them down, and the README says which cut gave its figures.
``CONTRASENT_MPNET_TASKS``: the STS tasks compared (default ``sts``: all seven);
``CONTRASENT_MPNET_STSB_PAIRS``: the export check on the first N STS-B test pairs (default all);
``CONTRASENT_MPNET_STEPS``: the fine-tuning steps (default 20: the run works and what it saves),
``CONTRASENT_MPNET_BATCH`` / ``CONTRASENT_MPNET_LENGTH`` its batch and length (default 16, 32).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from contrasent.cli.main import main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SENTS = [
    "A man is playing a guitar on the stage.",
    "The new movie is awesome.",
    "Three dogs run through the snow, chasing a red ball that bounces off a fence.",
    "Stocks fell sharply after the central bank raised interest rates again.",
    "x",
]


@pytest.fixture(scope="module")
def mpnet_dir() -> Path:
    spec = importlib.util.spec_from_file_location("fetch_mpnet", REPO / "bench" / "fetch_mpnet.py")
    fetch_mpnet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch_mpnet)
    path = fetch_mpnet.mpnet_path()
    if path is None:
        pytest.skip("all-mpnet-base-v2 not fetched: run python bench/fetch_mpnet.py")
    return path


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def summary(res: dict) -> dict[str, float]:
    """Task -> the summary Spearman (STS12-16 "all", STS-B / SICK-R "test"), and avg."""
    out = {}
    for name, task in res["tasks"].items():
        sp = task["spearman"]
        out[name] = sp["all"] if "all" in sp else sp["test"]
    out["avg"] = res["avg"]
    return out


def test_mpnet_eval_equals_sentence_transformers(
    mpnet_dir: Path, senteval_dir: Path, tmp_path: Path
) -> None:
    """``contrasent eval`` (7 STS tasks) and sentence-transformers' encode of the same model give
    the same Spearman on every task (to 0.01 point)."""
    from sentence_transformers import SentenceTransformer

    from contrasent.eval.sts import evaluate_sts
    from contrasent.eval.tables import format_table

    out = tmp_path / "ours.json"
    tasks = os.environ.get("CONTRASENT_MPNET_TASKS", "sts")
    args = ["eval", "--model", str(mpnet_dir), "--tasks", tasks, "--device", "cpu"]
    assert main([*args, "--data_dir", str(senteval_dir), "--output", str(out)]) == 0
    ours = json.loads(out.read_text())

    st = SentenceTransformer(str(mpnet_dir), device="cpu")
    theirs = evaluate_sts(
        lambda texts: st.encode(texts, batch_size=64, convert_to_numpy=True),
        data_dir=senteval_dir,
        mode="test",
        tasks=tasks,
    )
    print("\nours:\n" + format_table(ours) + "\nsentence-transformers:\n" + format_table(theirs))
    a, b = summary(ours), summary(theirs)
    print(json.dumps({"ours": a, "sentence_transformers": b}, indent=1))
    assert list(a) == list(b) and len(a) == (8 if tasks == "sts" else len(a))  # 7 tasks + avg
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=0.01), name


def test_mpnet_pairs_finetune_loads_in_sentence_transformers(
    mpnet_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    """pairs on wiki-split from MPNet: the run finishes, and sentence-transformers loads its saved
    folder with the embeddings our encoder gives for it (cosine >= 0.9999 on every sentence)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from contrasent.model.encoder import Encoder

    steps = int(os.environ.get("CONTRASENT_MPNET_STEPS", "20"))
    run = tmp_path / "run"
    argv = [
        "train", "--config", str(REPO / "configs" / "pairs-cpu.yaml"),
        "--model.name_or_path", str(mpnet_dir),
        "--data.path", str(shared_data / "pairs" / "wiki-split-tune.tsv"),
        "--eval.data_dir", str(shared_data / "senteval"),
        "--train.max_steps", str(steps), "--train.warmup_steps", str(max(steps // 10, 1)),
        "--train.batch_size", os.environ.get("CONTRASENT_MPNET_BATCH", "16"),
        "--data.max_seq_length", os.environ.get("CONTRASENT_MPNET_LENGTH", "32"),
        "--eval.at_start", "false", "--eval.at_end", "false",  # MPNet STS evaluations: minutes
        "--eval.every_steps", "0",  # (the recipe evaluates every 100 steps)
        "--checkpoint.every_steps", "0",  # no checkpoints: the report would embed STS-B dev
        "--output_dir", str(run),
    ]  # fmt: skip
    assert main(argv) == 0
    final = run / "final"
    assert (final / "modules.json").is_file()
    ours = Encoder.from_pretrained(str(final), device="cpu").encode(SENTS)
    st = SentenceTransformer(str(final), device="cpu").encode(SENTS, convert_to_numpy=True)
    assert cosines(ours, st).min() >= 0.9999
    np.testing.assert_allclose(ours, st, atol=1e-5)
    # Training changed the model: the saved weights are not the checkpoint's.
    from safetensors.torch import load_file

    before, after = (
        load_file(mpnet_dir / "model.safetensors"),
        load_file(final / "model.safetensors"),
    )
    common = [k for k in after if k in before]  # the same tensor names as the checkpoint's
    assert len(common) >= len(before) - 3  # buffers such as position_ids may be left out
    assert all(after[k].shape == before[k].shape for k in common)
    changed = [k for k in common if not torch.equal(before[k], after[k])]
    assert len(changed) > len(common) // 2
    base = SentenceTransformer(str(mpnet_dir), device="cpu").encode(SENTS, convert_to_numpy=True)
    print(f"\ncosine of the fine-tuned to the base embeddings: min {cosines(base, st).min():.6f}")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [(m["step"], m["loss"]) for m in metrics if m.get("kind") == "train"]
    assert logged and logged[-1][0] == steps and all(np.isfinite(v) for _, v in logged)
    print(f"\n{steps} steps, the logged losses (step, loss): {logged}")


def test_mpnet_onnx_export_parity(mpnet_dir: Path, senteval_dir: Path, tmp_path: Path) -> None:
    """``contrasent export --quantize int8`` of MPNet, on the STS-B test sentences beside
    sentence-transformers' encode: our torch and fp32 ONNX embeddings equal its (cosine >= 0.9999
    on every sentence, same Spearman to 0.01), int8 loses at most 1 Spearman point."""
    from sentence_transformers import SentenceTransformer

    from contrasent.data import senteval
    from contrasent.eval import sts
    from contrasent.model.encoder import Encoder
    from contrasent.model.export import int8_file_name

    out = tmp_path / "onnx"
    argv = ["export", "--model", str(mpnet_dir), "--output", str(out), "--quantize", "int8"]
    assert main([*argv, "--int8_target", "avx512_vnni"]) == 0
    st = SentenceTransformer(str(mpnet_dir), device="cpu")
    encoders = {
        "ST torch": lambda texts: st.encode(texts, batch_size=64, convert_to_numpy=True),
        "ours torch": Encoder.from_pretrained(str(mpnet_dir), device="cpu").encode,
        "ours onnx fp32": Encoder.from_pretrained(str(out), backend="onnx").encode,
        "ours onnx int8": Encoder.from_pretrained(
            str(out), backend="onnx", file_name=int8_file_name("avx512_vnni")
        ).encode,
    }
    test = senteval.read_stsb(senteval_dir, "test")
    if os.environ.get("CONTRASENT_MPNET_STSB_PAIRS"):
        n = int(os.environ["CONTRASENT_MPNET_STSB_PAIRS"])
        test = dataclasses.replace(test, s1=test.s1[:n], s2=test.s2[:n], gold=test.gold[:n])
    scores, embs = {}, {}
    for name, encode in encoders.items():
        index, embs[name] = sts.embed_unique(encode, [*test.s1, *test.s2], batch_size=64)
        res = sts.score_splits({"test": test}, {"test": sts.cosine_scores(test, index, embs[name])})
        scores[name] = res["spearman"]["test"]
    ref = embs["ST torch"]
    cos = {n: cosines(ref, e) for n, e in embs.items() if n != "ST torch"}
    sizes = {p.name: p.stat().st_size for p in (out / "onnx").glob("*.onnx")}
    print(
        "\n" + json.dumps({"stsb_test_spearman": scores, "onnx_bytes": sizes}, indent=1),
        *[f"{n}: cosine to ST torch min {c.min():.6f} mean {c.mean():.6f}" for n, c in cos.items()],
        sep="\n",
    )
    assert cos["ours torch"].min() >= 0.9999 and cos["ours onnx fp32"].min() >= 0.9999
    assert abs(scores["ours torch"] - scores["ST torch"]) < 0.01
    assert abs(scores["ours onnx fp32"] - scores["ST torch"]) < 0.01
    assert scores["ST torch"] - scores["ours onnx int8"] <= 1.0
