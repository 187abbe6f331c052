"""Similarity and search: exact search vs brute force numpy, faiss recall, save/load, edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contrasent.cli.main import main
from contrasent.core.errors import UserError
from contrasent.model.encoder import Encoder
from contrasent.model.similarity import cos_sim, exact_search
from contrasent.serve.faiss import IVF_MIN_ROWS
from contrasent.serve.search import Index

TEXTS = [
    "A man is playing a guitar.",
    "",
    "A woman is slicing an onion.",
    "Two dogs run through a field.",
    "   ",
    "Ünïcödé café in Zürich",
    "a text\nwith a newline inside",
    "The cat sits on the mat.",
]


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir: Path) -> Encoder:
    return Encoder.from_pretrained(tiny_bert_dir, device="cpu")


def brute_force(queries: np.ndarray, emb: np.ndarray, k: int, excluded=()) -> tuple:
    """Reference: full cosine matrix, excluded rows dropped, stable sort by (-score, id)."""
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    en = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = qn.astype(np.float64) @ en.T.astype(np.float64)
    keep = np.setdiff1d(np.arange(len(emb)), np.asarray(excluded, dtype=np.int64))
    ids, scores = [], []
    for row in sims:
        order = keep[np.lexsort((keep, -row[keep]))][:k]
        ids.append(order)
        scores.append(row[order])
    return np.array(scores), np.array(ids)


def clustered(n: int, dim: int, seed: int, centers: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim))
    return (c[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, dim))).astype(np.float32)


def test_exact_search_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(1003, 24)).astype(np.float32) * rng.uniform(0.5, 3, (1003, 1))
    queries = rng.normal(size=(9, 24)).astype(np.float32)
    excluded = np.array([3, 17, 500, 1002])
    inv = 1 / np.linalg.norm(emb, axis=1)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for block_rows in (37, 10_000):  # many blocks (running top-k merge) and a single one
        got_s, got_i = exact_search(q, emb, 10, inv, excluded, block_rows=block_rows)
        want_s, want_i = brute_force(queries, emb, 10, excluded)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    # through Index: raw (unnormalised) rows, texts attached, same ranking
    index = Index(emb, [f"t{i}" for i in range(1003)], excluded=excluded, engine="exact")
    hits = index.search(queries, top_k=10)
    assert [[h.id for h in hs] for hs in hits] == want_i.tolist()
    assert hits[0][0].text == f"t{want_i[0, 0]}"


def test_faiss_small_index_equals_exact() -> None:
    pytest.importorskip("faiss")
    emb = clustered(2000, 32, seed=1)
    queries = clustered(20, 32, seed=2)
    texts = [f"t{i}" for i in range(len(emb))]
    exact = Index(emb, texts, engine="exact").search(queries, top_k=10)
    fast = Index(emb, texts, engine="faiss")
    assert fast.engine == "faiss" and len(emb) < IVF_MIN_ROWS  # flat faiss index: exact
    got = fast.search(queries, top_k=10)
    assert [[h.id for h in hs] for hs in got] == [[h.id for h in hs] for hs in exact]
    np.testing.assert_allclose(
        [[h.score for h in hs] for hs in got], [[h.score for h in hs] for hs in exact], atol=1e-5
    )


def test_faiss_ivf_recall_at_10() -> None:
    """Approximate IVF search on 40k clustered random vectors: recall@10 vs exact search."""
    pytest.importorskip("faiss")
    emb = clustered(40_000, 32, seed=3)
    queries = clustered(200, 32, seed=4)
    texts = ["x"] * len(emb)
    exact = Index(emb, texts, engine="exact").search(queries, top_k=10)
    ivf = Index(emb, texts, engine="faiss")
    approx = ivf.search(queries, top_k=10)
    info = ivf._faiss[1]
    recall = np.mean(
        [
            len({h.id for h in a} & {h.id for h in e}) / 10
            for a, e in zip(approx, exact, strict=True)
        ]
    )
    print(f"faiss IVF nlist={info['nlist']} nprobe={info['nprobe']}: recall@10 = {recall:.4f}")
    assert info["type"] == "ivf"
    assert recall >= 0.95
    # more probes, better recall; all cells = exact
    ivf.nprobe = info["nlist"]
    full = ivf.search(queries, top_k=10)
    assert [[h.id for h in hs] for hs in full] == [[h.id for h in hs] for hs in exact]


def test_save_load_round_trip(encoder: Encoder, tmp_path: Path) -> None:
    index = Index.from_texts(encoder, TEXTS)
    before = index.search(["a guitar player", "onions"], top_k=3)
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    assert len(loaded) == len(TEXTS) and loaded.dim == encoder.hidden_size
    assert [loaded.texts[i] for i in range(len(TEXTS))] == TEXTS  # newline, unicode survive
    assert loaded.search(["a guitar player", "onions"], top_k=3) == before
    assert isinstance(loaded.embeddings, np.memmap)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["rows"] == len(TEXTS) and meta["excluded_empty"] == 2
    # saving again over the same folder replaces it; a non-index folder is refused
    loaded.save(tmp_path / "idx")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an index folder"):
        index.save(tmp_path / "other")


def test_faiss_index_saved_and_loaded(encoder: Encoder, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    index = Index.from_texts(encoder, TEXTS, engine="faiss")
    before = index.search("a guitar player", top_k=4)
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "faiss.index").is_file()
    loaded = Index.load(tmp_path / "idx", encoder=encoder)
    assert loaded.engine == "faiss" and loaded.search("a guitar player", top_k=4) == before


def test_edge_cases(encoder: Encoder) -> None:
    index = Index.from_texts(encoder, TEXTS)
    hits = index.search("guitar", top_k=100)  # top_k > index size: every non-empty text once
    assert sorted(h.id for h in hits) == [0, 2, 3, 5, 6, 7]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.text == TEXTS[h.id] for h in hits)
    cut = index.search("guitar", top_k=100, threshold=hits[2].score)
    assert cut == hits[:3]
    assert index.search([], top_k=3) == []
    with pytest.raises(UserError, match="top_k"):
        index.search("guitar", top_k=0)
    empty = Index.from_texts(encoder, [])
    assert len(empty) == 0 and empty.search(["a", "b"], top_k=5) == [[], []]
    only_blank = Index.from_texts(encoder, ["", " "])
    assert only_blank.search("a", top_k=5) == []
    with pytest.raises(UserError, match="dimension"):
        index.search(np.ones((1, 7)), top_k=1)


def test_similarity_shapes(encoder: Encoder) -> None:
    a, b = ["a guitar", "an onion"], ["music", "food", "dogs"]
    ea, eb = encoder.encode(a), encoder.encode(b)
    want = (ea / np.linalg.norm(ea, axis=1, keepdims=True)) @ (
        eb / np.linalg.norm(eb, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(encoder.similarity(a, b), want, atol=1e-5)
    np.testing.assert_allclose(encoder.similarity(a[0], b), want[0], atol=1e-5)
    np.testing.assert_allclose(encoder.similarity(a, b[1]), want[:, 1], atol=1e-5)
    assert isinstance(encoder.similarity(a[0], b[0]), float)
    np.testing.assert_allclose(encoder.similarity(ea, eb), want, atol=1e-5)
    np.testing.assert_allclose(cos_sim(ea[0], eb), want[:1], atol=1e-5)
    assert cos_sim(np.zeros((1, 4)), np.ones((2, 4))).tolist() == [[0.0, 0.0]]


def test_from_files_checks_alignment(encoder: Encoder, tmp_path: Path) -> None:
    lines = TEXTS[:6]  # one text a line, empty ones included
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    np.save(tmp_path / "e.npy", encoder.encode(lines))
    index = Index.from_files(tmp_path / "e.npy", tmp_path / "t.txt", encoder=encoder)
    hits = index.search("guitar", top_k=10)
    assert sorted(h.id for h in hits) == [0, 2, 3, 5]  # the empty lines 1 and 4 never come back
    assert all(h.text == lines[h.id] for h in hits)
    np.save(tmp_path / "bad.npy", encoder.encode(lines[:-1]))
    with pytest.raises(UserError, match="row i"):
        Index.from_files(tmp_path / "bad.npy", tmp_path / "t.txt")


# ----------------------------------------------------------------------------- CLI
def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_index_build_and_search(capsys, tiny_bert_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in TEXTS) + "\n")
    code, out, err = run(
        capsys, "index", "build", "--model", str(tiny_bert_dir), "--input", str(corpus),
        "--output", str(tmp_path / "idx"),
    )  # fmt: skip
    assert code == 0, err
    assert "indexed 6 texts (2 empty lines skipped)" in out
    code, out, err = run(
        capsys, "search", "--index", str(tmp_path / "idx"), "--top_k", "2", "guitar"
    )
    assert code == 0, err
    assert "query: guitar" in out and out.count("\n  ") == 3  # header + 2 hits
    queries = tmp_path / "q.txt"
    queries.write_text("guitar\n\n  \nonion\n")
    hits_file = tmp_path / "hits.jsonl"
    code, out, err = run(
        capsys, "search", "--index", str(tmp_path / "idx"), "--queries", str(queries),
        "--top_k", "3", "--output", str(hits_file),
    )  # fmt: skip
    assert code == 0, err
    assert "skipped 2 empty line(s)" in err
    records = [json.loads(line) for line in hits_file.read_text().splitlines()]
    assert [r["query"] for r in records] == ["guitar", "onion"]
    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu")
    lines = corpus.read_text().splitlines()
    want = Index.from_texts(enc, lines).search(["guitar", "onion"], top_k=3)
    for rec, hs in zip(records, want, strict=True):
        assert [h["id"] for h in rec["hits"]] == [h.id for h in hs]
        assert [h["text"] for h in rec["hits"]] == [lines[h.id] for h in hs]
        np.testing.assert_allclose(
            [h["score"] for h in rec["hits"]], [h.score for h in hs], atol=1e-5
        )


def test_cli_errors(capsys, tiny_bert_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    code, _, err = run(
        capsys, "index", "build", "--model", str(tiny_bert_dir), "--input",
        str(tmp_path / "empty.txt"), "--output", str(tmp_path / "idx"),
    )  # fmt: skip
    assert code == 2 and "nothing to index" in err and "Traceback" not in err
    assert not (tmp_path / "idx").exists()
    code, _, err = run(capsys, "search", "--index", str(tmp_path / "nope"), "q")
    assert code == 2 and "not a contrasent index" in err
    code, _, err = run(capsys, "search", "--index", str(tmp_path))
    assert code == 2 and "at least one QUERY" in err
