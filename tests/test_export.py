"""ONNX export: layout, parity with the torch encoder, the ONNX backend, and loading in
sentence-transformers' own ONNX backend (run in its separate environment)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import build_tiny_bert
from contrasent.cli.main import main
from contrasent.core.errors import UserError
from contrasent.model.encoder import Encoder
from contrasent.model.export import PROBES, export_onnx, int8_file_name
from contrasent.model.pooling import HIDDEN_STATE_POOLINGS, POOLINGS

REPO = Path(__file__).resolve().parents[1]
SENTS = [
    "A man is playing a guitar.",
    "",
    "Ünïcödé café, 日本語",
    "word " * 200,  # truncated
    "short",
    "Two dogs run through a field while a third one watches.",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny3x"), minilm_dir, num_hidden_layers=3)


@pytest.fixture(scope="module")
def exported(tiny3: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Encoder, Path]:
    # cls pooling: sentence-transformers sees Pooling(cls) + Dense(tanh, pooler weights)
    enc = Encoder.from_pretrained(tiny3, pooling="cls", normalize=True, device="cpu")
    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    export_onnx(enc, out, quantize="int8", int8_target="avx512_vnni")
    return enc, out


def test_layout_and_fp32_parity(exported: tuple[Encoder, Path]) -> None:
    enc, out = exported
    files = sorted(p.name for p in (out / "onnx").iterdir())
    assert files == ["contrasent_onnx.json", "model.onnx", "model_qint8_avx512_vnni.onnx"]
    assert (out / "modules.json").is_file()  # still a sentence-transformers directory
    meta = json.loads((out / "onnx" / "contrasent_onnx.json").read_text())
    assert meta["files"]["model.onnx"]["min_cosine_vs_torch"] >= 0.9999
    assert meta["sentence_transformers_onnx"] is True
    onnx_enc = Encoder.from_pretrained(out, backend="onnx")
    want, got = enc.encode(SENTS), onnx_enc.encode(SENTS, batch_size=4)
    assert cosines(want, got).min() >= 0.9999
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalize=True
    int8 = Encoder.from_pretrained(out, backend="onnx", file_name="model_qint8_avx512_vnni.onnx")
    q = int8.encode(SENTS)
    assert q.shape == want.shape and 0.8 < cosines(want, q).min() < 1.0  # quantized, not equal


@pytest.mark.parametrize("pooling", POOLINGS)
def test_every_pooling_exports(tiny3: Path, tmp_path: Path, pooling: str) -> None:
    """Every pooling exports, and the graph runs on batches of any size (the export traces a
    batch of 2: a size frozen into the graph fails to broadcast on 1 or 6 rows)."""
    enc = Encoder.from_pretrained(tiny3, pooling=pooling, device="cpu")
    meta = export_onnx(enc, tmp_path / "out")
    st_ok = pooling not in HIDDEN_STATE_POOLINGS  # ST's ONNX backend passes no hidden states
    assert meta["sentence_transformers_onnx"] == st_ok
    onnx_enc = Encoder.from_pretrained(tmp_path / "out", backend="onnx")
    np.testing.assert_allclose(onnx_enc.encode(SENTS), enc.encode(SENTS), atol=1e-5)
    np.testing.assert_allclose(onnx_enc.encode(SENTS[:1]), enc.encode(SENTS[:1]), atol=1e-5)


def test_onnx_encoder_api(exported: tuple[Encoder, Path], tmp_path: Path) -> None:
    enc, out = exported
    onnx_enc = Encoder.from_pretrained(out, backend="onnx", normalize=False)
    assert onnx_enc.encode([]).shape == (0, enc.hidden_size)
    stats: dict[str, int] = {}
    raw = onnx_enc.encode(SENTS, batch_size=2, stats=stats)
    assert stats["truncated"] == 1
    single = np.stack([onnx_enc.encode(s)[0] for s in SENTS])  # batching never changes a row
    np.testing.assert_allclose(raw, single, atol=1e-5)
    sims = onnx_enc.similarity(SENTS[0], SENTS)
    np.testing.assert_allclose(sims, enc.similarity(SENTS[0], SENTS), atol=1e-5)
    with pytest.raises(UserError, match="exported with pooling 'cls'"):
        Encoder.from_pretrained(out, backend="onnx", pooling="mean")
    with pytest.raises(UserError, match="this export has: model.onnx"):
        Encoder.from_pretrained(out, backend="onnx", file_name="nope.onnx")
    with pytest.raises(UserError, match="contrasent export"):
        Encoder.from_pretrained(enc.model.name_or_path, backend="onnx")
    with pytest.raises(UserError, match="precision"):
        onnx_enc.encode(["x"], precision="fp16")


def test_export_refuses_non_model_folder(exported: tuple[Encoder, Path], tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a model directory"):
        export_onnx(exported[0], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_export_then_embed_with_onnx(capsys, tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    code = main(["export", str(tiny_bert_dir), "--output", str(out), "--format", "onnx",
                 "--quantize", "int8", "--int8_target", "avx2"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "model_quint8_avx2.onnx: int8" in printed
    assert (out / "onnx" / int8_file_name("avx2")).is_file()
    (tmp_path / "in.txt").write_text("\n".join(SENTS) + "\n")
    code = main(["embed", "--model", str(out), "--backend", "onnx", "--input",
                 str(tmp_path / "in.txt"), "--output", str(tmp_path / "e.npy")])  # fmt: skip
    assert code == 0
    torch_enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), torch_enc.encode(SENTS), atol=1e-5)


# ----------------------------------------------------------------------------- sentence-transformers
@pytest.fixture(scope="session")
def st_onnx_python() -> str:
    """Python of the separate sentence-transformers[onnx] venv (built once, then cached)."""
    given = os.environ.get("CONTRASENT_ST_ONNX_PYTHON")
    if given:
        return given
    res = subprocess.run(
        [str(REPO / "bench" / "make_st_onnx_env.sh")], capture_output=True, text=True, timeout=900
    )
    if res.returncode != 0:
        pytest.fail(f"building the sentence-transformers[onnx] venv failed:\n{res.stderr[-3000:]}")
    return res.stdout.strip().splitlines()[-1]


@pytest.mark.st_onnx
def test_sentence_transformers_onnx_backend_loads_export(
    exported: tuple[Encoder, Path], st_onnx_python: str, tmp_path: Path
) -> None:
    """SentenceTransformer(dir, backend="onnx") (sentence-transformers 5.7 + optimum) loads both
    files; fp32 matches our torch encoder, int8 matches our ONNX backend on the same file."""
    enc, out = exported
    (tmp_path / "s.json").write_text(json.dumps(SENTS + PROBES))
    files = ["onnx/model.onnx", "onnx/model_qint8_avx512_vnni.onnx"]
    res = subprocess.run(
        [st_onnx_python, str(REPO / "bench" / "st_onnx_peer.py"), "check", str(out),
         str(tmp_path / "s.json"), str(tmp_path / "st.npz"), *files],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    st = np.load(tmp_path / "st.npz")
    texts = SENTS + PROBES
    assert cosines(st[files[0]], enc.encode(texts)).min() >= 0.9999
    ours_int8 = Encoder.from_pretrained(out, backend="onnx", file_name=files[1]).encode(texts)
    assert cosines(st[files[1]], ours_int8).min() >= 0.9999


@pytest.mark.slow
def test_minilm_int8_stsb_loss(minilm_dir: Path, senteval_dir: Path, tmp_path: Path) -> None:
    """Real model: fp32 ONNX = torch on every STS-B test sentence (cosine >= 0.9999), and the
    int8 model loses at most 0.5 STS-B test Spearman point (measured: 82.03 -> 81.80)."""
    from contrasent.eval.sts import evaluate_sts

    enc = Encoder.from_pretrained(minilm_dir, device="cpu")
    export_onnx(enc, tmp_path / "m", quantize="int8", int8_target="avx512_vnni")
    fp32 = Encoder.from_pretrained(tmp_path / "m", backend="onnx")
    int8 = Encoder.from_pretrained(
        tmp_path / "m", backend="onnx", file_name=int8_file_name("avx512_vnni")
    )
    scores, embs = {}, {}
    for name, e in (("torch", enc), ("fp32", fp32), ("int8", int8)):

        def encode(texts, e=e, name=name):
            out = e.encode(texts, batch_size=64)
            embs.setdefault(name, []).append(out)
            return out

        res = evaluate_sts(encode, data_dir=senteval_dir, tasks="stsb")
        scores[name] = res["tasks"]["STSBenchmark"]["spearman"]["test"]
    a, b = np.concatenate(embs["torch"]), np.concatenate(embs["fp32"])
    assert cosines(a, b).min() >= 0.9999
    print(
        f"STS-B test: torch {scores['torch']:.2f}, onnx fp32 {scores['fp32']:.2f}, int8 {scores['int8']:.2f}"
    )
    assert abs(scores["fp32"] - scores["torch"]) < 0.01
    assert scores["torch"] - scores["int8"] <= 0.5
