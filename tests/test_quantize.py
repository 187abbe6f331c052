"""Quantized embeddings: codes equal to sentence-transformers' ``quantize_embeddings``, search
over them (Hamming, int8 dot product, rescoring) with recall@10 against float search on a fixed
set, memory per vector, and ``contrasent embed --quantize``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contrasent.serve.quantize import (
    PRECISIONS,
    bytes_per_vector,
    calibration_ranges,
    dequantize,
    hamming,
    quantize,
    recall_at_k,
    search_quantized,
)


def _fixed_set(n=3000, q=100, dim=128, seed=0):
    """Unit vectors in 60 clusters, queries near corpus rows: a fixed retrieval set."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((60, dim))
    corpus = centers[rng.integers(0, 60, n)] + 0.9 * rng.standard_normal((n, dim))
    queries = corpus[rng.integers(0, n, q)] + 0.5 * rng.standard_normal((q, dim))
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return norm(corpus), norm(queries)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_codes_equal_quantize_embeddings(precision):
    from sentence_transformers.util import quantize_embeddings

    corpus, queries = _fixed_set(n=500, q=20, dim=100)  # 100: bits not a multiple of 8
    np.testing.assert_array_equal(
        quantize(corpus, precision), quantize_embeddings(corpus, precision)
    )
    # queries with the corpus's calibration, as ranges and as calibration embeddings
    ranges = calibration_ranges(corpus)
    ours = quantize(queries, precision, ranges)
    np.testing.assert_array_equal(ours, quantize_embeddings(queries, precision, ranges=ranges))
    theirs = quantize_embeddings(queries, precision, calibration_embeddings=corpus)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.shape[1] == bytes_per_vector(100, precision)


def test_hamming_and_dequantize_by_hand():
    a = np.array([[0b10110000, 0xFF]], np.uint8)
    b = np.array([[0b00110001, 0x0F], [0b10110000, 0xFF]], np.uint8)
    assert hamming(a, b).tolist() == [[2 + 4, 0]]
    codes = quantize(np.array([[0.3, -0.2, 0.0, 1.0]], np.float32), "binary")
    assert dequantize(codes, "binary")[0, :4].tolist() == [1, -1, -1, 1]
    x = np.array([[0.0, 1.0], [1.0, 0.5]], np.float32)
    r = calibration_ranges(x)
    back = dequantize(quantize(x, "int8", r), "int8", r)
    assert np.abs(back - x).max() <= 1 / 255  # within one bucket


def test_search_recall_and_memory_on_a_fixed_set():
    """recall@10 against exact float search (100 queries, 3000 x 128 unit vectors in clusters;
    measured: int8 0.82, int8 + rescore 0.99, binary 0.46, binary + rescore 0.54): rescoring
    the top 40 by the float query lifts both; faiss and packed numpy agree."""
    corpus, queries = _fixed_set()
    exact = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]
    ranges = calibration_ranges(corpus)
    recall = {}
    for p in ("binary", "int8"):
        codes = quantize(corpus, p, ranges)
        for rescore in (None, 40):
            ids, _ = search_quantized(queries, codes, p, ranges, top_k=10, rescore_k=rescore)
            recall[(p, rescore)] = recall_at_k(ids, exact)
    assert recall[("int8", None)] >= 0.75 and recall[("int8", 40)] >= 0.95
    assert recall[("binary", None)] < recall[("int8", None)]
    assert recall[("binary", 40)] > recall[("binary", None)] + 0.05
    codes = quantize(corpus, "ubinary")
    f_ids, f_sc = search_quantized(queries, codes, "ubinary", top_k=10, use_faiss=True)
    n_ids, n_sc = search_quantized(queries, codes, "ubinary", top_k=10, use_faiss=False)
    np.testing.assert_array_equal(f_sc, n_sc)  # same distances (ties may order differently)
    assert (
        bytes_per_vector(128, None),
        bytes_per_vector(128, "int8"),
        bytes_per_vector(128, "binary"),
    ) == (512, 128, 16)


def test_int8_first_stage_and_rescore_scores():
    corpus, queries = _fixed_set(n=200, q=5, dim=16)
    r = calibration_ranges(corpus)
    codes = quantize(corpus, "int8", r)
    ids, scores = search_quantized(queries, codes, "int8", r, top_k=3)
    want = quantize(queries, "int8", r).astype(np.int64) @ codes.astype(np.int64).T
    np.testing.assert_array_equal(scores, np.sort(want, axis=1)[:, ::-1][:, :3])
    ids, scores = search_quantized(queries, codes, "int8", r, top_k=3, rescore_k=20)
    deq = dequantize(codes, "int8", r)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ deq.T, ids, 1), rtol=1e-5)


def test_embed_quantize_cli(tmp_path, tiny_bert_dir):
    from sentence_transformers.util import quantize_embeddings

    from contrasent.cli.main import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"sentence number {i} about topic {i % 7}" for i in range(40)))
    base = ["embed", "--model", str(tiny_bert_dir), "--input", str(corpus)]
    main([*base, "--output", str(tmp_path / "f.npy")])
    floats = np.load(tmp_path / "f.npy")
    main([*base, "--output", str(tmp_path / "q.npy"), "--quantize", "int8", "--keep_float", "true"])
    ranges = np.load(tmp_path / "q.npy.ranges.npy")
    np.testing.assert_array_equal(ranges, np.vstack([floats.min(0), floats.max(0)]))
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), quantize_embeddings(floats, "int8"))
    np.testing.assert_array_equal(np.load(tmp_path / "q.float32.npy"), floats)
    meta = json.loads((tmp_path / "q.npy.quantization.json").read_text())
    assert meta["bytes_per_vector"] == 32 and meta["float32_bytes_per_vector"] == 128
    # queries quantized with the corpus's ranges
    main([*base, "--output", str(tmp_path / "b.npy"), "--quantize", "uint8",
          "--quantize_ranges", str(tmp_path / "q.npy.ranges.npy")])  # fmt: skip
    want = quantize_embeddings(floats, "uint8", ranges=ranges)
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), want)
    assert not (tmp_path / "b.float32.npy").exists()
    main([*base, "--output", str(tmp_path / "bin.npy"), "--quantize", "binary"])
    np.testing.assert_array_equal(
        np.load(tmp_path / "bin.npy"), quantize_embeddings(floats, "binary")
    )


@pytest.mark.parametrize("precision", ["binary", "int8"])
def test_quantized_index_equals_search_quantized(tmp_path, precision):
    """index build --quantize's folder searches as search_quantized over the same codes (ids,
    hence recall@10, equal), empty lines never hits, memory recorded; rescoring by the kept
    floats beats rescoring by the codes."""
    from contrasent.serve.index import build_index
    from contrasent.serve.quantized_index import load_index

    corpus, queries = _fixed_set()
    corpus[[5, 77]] = 0.0  # two empty lines below: no codes, never hits
    np.save(tmp_path / "e.npy", corpus)
    lines = [f"t{i}" if i not in (5, 77) else "" for i in range(len(corpus))]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    keep = np.setdiff1d(np.arange(len(corpus)), [5, 77])
    exact = keep[np.argsort(-(queries @ corpus[keep].T), axis=1)[:, :10]]
    codes = quantize(corpus[keep], precision)  # int8: calibrated on the non-empty rows too
    ranges = calibration_ranges(corpus[keep]) if precision == "int8" else None
    recalls = {}
    for keep_float in (False, True):
        out = tmp_path / f"idx-{keep_float}"
        build_index(None, tmp_path / "c.txt", out, embeddings_path=tmp_path / "e.npy",
                    quantize=precision, keep_float=keep_float)  # fmt: skip
        meta = json.loads((out / "index.json").read_text())["quantization"]
        assert meta["bytes_per_vector"] == bytes_per_vector(128, precision)
        assert meta["stored_bytes_per_vector"] == meta["bytes_per_vector"] + 512 * keep_float
        assert (out / "embeddings.npy").exists() == keep_float
        for rescore_k, by in [(None, "auto"), (40, "codes")] + [(40, "float")] * keep_float:
            index = load_index(out, rescore_k=rescore_k, rescore_by=by)
            hits = index.search_embeddings(queries, top_k=10)
            ids = np.array([[h.id for h in row] for row in hits])
            rows = corpus[keep] if by == "float" else None
            want, _ = search_quantized(queries, codes, precision, ranges, 10, rescore_k,
                                       float_rows=rows)  # fmt: skip
            np.testing.assert_array_equal(ids, keep[want])
            recalls[rescore_k, by] = recall_at_k(ids, exact)
    assert recalls[40, "float"] > recalls[40, "codes"] >= recalls[None, "auto"] - 0.02
    assert recalls[40, "float"] > 0.9


def test_index_build_quantize_cli(tmp_path, tiny_bert_dir, capsys):
    from contrasent.cli.main import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"sentence number {i} about topic {i % 7}" for i in range(40)))
    build = ["index", "build", "--model", str(tiny_bert_dir), "--input", str(corpus)]
    assert main([*build, "--output", str(tmp_path / "q"), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "memory: 32 bytes per vector (int8 codes, dim 32; float32: 128)" in out
    assert "no float rows stored" in out
    assert (tmp_path / "q" / "ranges.npy").exists()
    search = ["search", "--index", str(tmp_path / "q"), "--top_k", "3", "topic 3 sentence"]
    assert main([*search, "--rescore_k", "10", "--output", str(tmp_path / "h.jsonl")]) == 0
    hits = json.loads((tmp_path / "h.jsonl").read_text())["hits"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
