"""Evaluation on the user's own files: each metric against sentence-transformers' evaluators (on
the same embeddings), trec_eval's graded nDCG by hand, sklearn's clustering, the built-in SICK-R;
file mistakes, kind detection, spec parsing, .gz and .csv reading."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from contrasent.core.errors import UserError
from contrasent.data import senteval
from contrasent.eval import sts
from contrasent.eval.tasks import (
    check_tasks,
    evaluate_task,
    evaluate_tasks,
    parse_task_specs,
)
from contrasent.eval.tasks import retrieval as retrieval_mod
from contrasent.eval.tasks.clustering import ClusteringTask, evaluate_clustering
from contrasent.eval.tasks.pair_classification import (
    best_accuracy,
    best_f1,
    evaluate_pair_classification,
    read_pair_classification,
)
from contrasent.eval.tasks.reranking import evaluate_reranking, read_reranking
from contrasent.eval.tasks.retrieval import RetrievalTask, evaluate_retrieval, read_retrieval
from contrasent.eval.tasks.sts_file import evaluate_sts_file
from stand_ins import hashed_encode

IR_METRICS = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "recall@100")
IR_METRICS += ("accuracy@1", "accuracy@10")


# ----------------------------------------------------------------------------- helpers
def random_encode(texts: list[str]) -> np.ndarray:
    """A fixed random vector per text (seeded by its hash): no ties between different texts."""
    rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(16) for t in texts]
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), 16)


def table_encode(vectors: dict[str, list[float]]):
    """An encode function that looks each text up in ``vectors`` (hand-placed embeddings)."""

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray([vectors[t] for t in texts], dtype=np.float32)

    return encode


class FixedModel:
    """What sentence-transformers' evaluators call on a model, answering with ``encode``'s
    vectors, so both sides score the very same embeddings."""

    similarity_fn_name = "cosine"
    model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *a, **k: None)

    def __init__(self, encode) -> None:
        self._encode = encode

    def encode(self, sentences, convert_to_tensor: bool = False, **kwargs):
        import torch

        emb = torch.from_numpy(self._encode(list(sentences)))
        return emb if convert_to_tensor else emb.numpy()

    encode_query = encode_document = encode

    def similarity(self, a, b):
        from sentence_transformers.util import cos_sim

        return cos_sim(a, b)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_tsv(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_beir(folder: Path, corpus: dict, queries: dict, qrels: list[tuple]) -> Path:
    write_jsonl(folder / "corpus.jsonl", [{"_id": k, **v} for k, v in corpus.items()])
    write_jsonl(folder / "queries.jsonl", [{"_id": k, "text": v} for k, v in queries.items()])
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in qrels)]
    (folder / "qrels").mkdir()
    write_tsv(folder / "qrels" / "test.tsv", lines)
    return folder


def synthetic_beir(folder: Path) -> Path:
    """300 documents, 50 texts twice (d<j> and d<j+250>: exact ties, which sentence-transformers
    orders by id as a string, "d255" before "d5"), titles on some; 40 queries with 1-4 relevant
    documents, 5 that are the text of a doubled document with only the copy d<j+250> relevant
    (the tie order decides its rank), 5 without judgments."""
    rng = np.random.default_rng(1)
    corpus = {f"d{i}": {"text": f"document {i % 250} words"} for i in range(300)}
    for i in range(0, 250, 9):
        corpus[f"d{i}"]["title"] = f"title {i % 4}"
    queries = {f"q{i}": f"query {i} about {i % 5}" for i in range(50)}
    qrels = [
        (f"q{i}", f"d{d}", 1)
        for i in range(40)
        for d in rng.choice(300, size=rng.integers(1, 5), replace=False)
    ]
    for i, j in enumerate((5, 12, 30, 47, 49), 40):
        queries[f"q{i}"] = f"document {j} words"
        qrels.append((f"q{i}", f"d{j + 250}", 1))
    return write_beir(folder, corpus, queries, qrels)


@pytest.fixture(scope="module")
def st_eval():
    """sentence-transformers' evaluators (the reference; imported only by the tests using it)."""
    from sentence_transformers.sentence_transformer import evaluation

    return evaluation


@pytest.fixture
def one_thread():
    """k-means' OpenMP threads spin-wait on a machine whose cores are busy (seconds instead of
    milliseconds here): one thread is fast and gives the same clusters."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def tasks_dir(shared_data: Path) -> Path:
    return shared_data / "tasks"


# ----------------------------------------------------------------------------- retrieval
def st_retrieval(st_eval, task: RetrievalTask, encode) -> dict[str, float]:
    relevant = {q: {d for d, g in docs.items() if g > 0} for q, docs in task.qrels.items()}
    evaluator = st_eval.InformationRetrievalEvaluator(
        task.queries, task.corpus, relevant, mrr_at_k=[10], ndcg_at_k=[10],
        accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10, 100], map_at_k=[100],
        write_csv=False,
    )  # fmt: skip
    out = evaluator(FixedModel(encode))
    return {m: out[f"cosine_{m}"] for m in IR_METRICS}


@pytest.mark.parametrize("which", ["synthetic", "wikisplit-retrieval"])
def test_retrieval_equals_sentence_transformers(st_eval, tasks_dir, tmp_path, which) -> None:
    folder = synthetic_beir(tmp_path / "beir") if which == "synthetic" else tasks_dir / which
    task = read_retrieval(folder)
    ours = evaluate_retrieval(random_encode, task)
    theirs = st_retrieval(st_eval, task, random_encode)
    assert {m: ours[m] for m in IR_METRICS} == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    if which == "synthetic":
        assert ours["n_queries"] == 45 and ours["skipped_no_relevant"] == 5
        assert task.corpus["d9"] == "title 1 document 9 words"  # BEIR's title + " " + text
        assert 0 < ours["ndcg@10"] < 1  # the ranking is neither perfect nor empty


def hand_ndcg10(ranking: list[str], grades: dict[str, int]) -> float:
    """trec_eval's ndcg_cut.10: gain = grade, discount log2(rank + 1), ideal = grades sorted."""
    dcg = sum(grades.get(d, 0) / math.log2(r + 2) for r, d in enumerate(ranking[:10]))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:10]
    return dcg / sum(g / math.log2(r + 2) for r, g in enumerate(ideal))


def test_graded_ndcg_is_trec_evals(tasks_dir: Path) -> None:
    """Grades count in nDCG (a grade-2 document first beats a grade-1 one): checked by hand on
    the ranking the evaluation itself searched, on the shared graded task."""
    task = read_retrieval(tasks_dir / "sick-graded-retrieval")
    result = evaluate_retrieval(hashed_encode, task)
    queries, _ = retrieval_mod.select_queries(task)
    index, emb = retrieval_mod.embed_texts(
        hashed_encode, [*queries.values(), *task.corpus.values()]
    )
    norm = retrieval_mod.normalize_rows(emb)
    hits = retrieval_mod.search(norm, index, list(queries.values()), task.corpus, 100)
    hand = [
        hand_ndcg10([d for d, _ in h], task.qrels[q]) for q, h in zip(queries, hits, strict=True)
    ]
    assert result["ndcg@10"] == pytest.approx(np.mean(hand), rel=1e-12)
    binary = {q: {d: 1 for d, g in docs.items() if g > 0} for q, docs in task.qrels.items()}
    flat = evaluate_retrieval(hashed_encode, RetrievalTask(task.corpus, task.queries, binary))
    assert flat["ndcg@10"] != pytest.approx(result["ndcg@10"], abs=1e-4)
    assert result["replaced_judgments"] == 4  # repeated lines in the file: the last grade counts


def test_graded_ndcg_small_hand_case() -> None:
    # query = x axis; documents at decreasing cosine a > b > c; grades b=2, c=1, a irrelevant
    vectors = {"q": [1, 0], "a": [1, 0.1], "b": [1, 0.5], "c": [1, 2]}
    encode = table_encode(vectors)
    task = RetrievalTask({"A": "a", "B": "b", "C": "c"}, {"Q": "q"}, {"Q": {"B": 2, "C": 1}})
    result = evaluate_retrieval(encode, task)
    dcg = 0 / 1 + 2 / math.log2(3) + 1 / math.log2(4)
    assert result["ndcg@10"] == pytest.approx(dcg / (2 + 1 / math.log2(3)), rel=1e-12)
    assert result["mrr@10"] == pytest.approx(0.5) and result["recall@1"] == 0.0


def test_map_divides_by_all_relevant_documents_like_trec_eval() -> None:
    """With more than 100 relevant documents trec_eval's map_cut.100 divides by all of them
    (sentence-transformers by min(100, R)): 150 relevant, all ranked first -> 100/150."""
    docs = {f"d{i:03d}": f"doc {i}" for i in range(200)}
    qrels = {"q": {f"d{i:03d}": 1 for i in range(150)}}
    vec = {f"doc {i}": [1.0, i / 1000] for i in range(200)} | {"query": [1.0, -1.0]}
    encode = table_encode(vec)
    result = evaluate_retrieval(encode, RetrievalTask(docs, {"q": "query"}, qrels))
    assert result["map@100"] == pytest.approx(100 / 150, rel=1e-12)
    assert result["recall@100"] == pytest.approx(100 / 150, rel=1e-12)


def test_retrieval_blocks_and_chunks_give_the_same_numbers(tmp_path, monkeypatch) -> None:
    folder = synthetic_beir(tmp_path / "beir")
    whole = evaluate_retrieval(random_encode, folder)
    monkeypatch.setattr(retrieval_mod, "QUERY_CHUNK", 7)
    monkeypatch.setattr("contrasent.model.similarity.SCORE_FLOATS", 7 * 120)  # ~120-row blocks
    assert evaluate_retrieval(random_encode, folder) == whole


def test_retrieval_counts_empty_texts(tmp_path) -> None:
    corpus = {"a": {"text": "apple pie"}, "b": {"text": "  "}, "c": {"text": "cherry"}}
    queries = {"q1": "apple", "q2": "", "q3": "cherry"}
    qrels = [("q1", "a", 1), ("q2", "a", 1), ("q3", "b", 1), ("q3", "c", 1)]
    result = evaluate_retrieval(hashed_encode, write_beir(tmp_path / "f", corpus, queries, qrels))
    assert result["skipped_empty_queries"] == 1 and result["skipped_empty_docs"] == 1
    assert result["n_queries"] == 2 and result["n_docs"] == 2
    # q3's empty relevant document stays relevant (never found): recall@10 = (1 + 1/2) / 2
    assert result["recall@10"] == pytest.approx(0.75)


# ----------------------------------------------------------------------------- reranking
def test_reranking_equals_sentence_transformers(st_eval, tasks_dir: Path) -> None:
    task = read_reranking(tasks_dir / "snli-reranking.jsonl")
    ours = evaluate_reranking(random_encode, task)
    samples = [vars(s) for s in task.samples]
    theirs = st_eval.RerankingEvaluator(samples, write_csv=False)(FixedModel(random_encode))
    assert ours["map"] == pytest.approx(theirs["map"], rel=1e-9)
    assert ours["mrr@10"] == pytest.approx(theirs["mrr@10"], rel=1e-9)
    assert ours["ndcg@10"] == pytest.approx(theirs["ndcg@10"], rel=1e-9)
    assert ours["n_queries"] == 1500


def test_reranking_skips_are_counted(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"query": "a cat", "positive": ["a kitten", ""], "negative": ["a car"]},
            {"query": "a dog", "positive": [], "negative": ["x"]},
            {"query": "a bird", "positive": "a sparrow", "negative": []},
            {"query": " ", "positive": ["p"], "negative": ["n"]},
        ],
    )
    result = evaluate_reranking(hashed_encode, path)
    assert result["n_queries"] == 1 and result["skipped_empty"] == 2
    assert result["skipped_no_positive"] == 1 and result["skipped_no_negative"] == 1


# ----------------------------------------------------------------------------- pairs
def test_pair_classification_equals_sentence_transformers(st_eval, tasks_dir: Path) -> None:
    task = read_pair_classification(tasks_dir / "mrpc-pairs.tsv")
    ours = evaluate_pair_classification(random_encode, task)
    evaluator = st_eval.BinaryClassificationEvaluator(
        task.sentence1, task.sentence2, task.labels, write_csv=False
    )
    theirs = evaluator(FixedModel(random_encode))
    for metric in ("ap", "accuracy", "f1", "precision", "recall"):
        assert ours[metric] == pytest.approx(theirs[f"cosine_{metric}"], rel=1e-9), metric
    for metric in ("accuracy_threshold", "f1_threshold"):  # their cosines are float32
        assert ours[metric] == pytest.approx(theirs[f"cosine_{metric}"], abs=1e-6), metric


@pytest.mark.parametrize("seed", range(5))
def test_best_thresholds_equal_sentence_transformers_with_ties(st_eval, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 40) / 5.0  # many exact ties
    labels = rng.integers(0, 2, 40)
    ref = st_eval.BinaryClassificationEvaluator
    assert best_accuracy(scores, labels) == ref.find_best_acc_and_threshold(scores, labels, True)
    assert best_f1(scores, labels) == ref.find_best_f1_and_threshold(scores, labels, True)


# ----------------------------------------------------------------------------- STS, clustering
def test_sts_file_equals_builtin_sickr(tasks_dir: Path, senteval_dir: Path) -> None:
    ours = evaluate_sts_file(hashed_encode, tasks_dir / "sick-sts.tsv")
    pairs = senteval.read_sick(senteval_dir, "test")
    index, emb = sts.embed_unique(hashed_encode, [*pairs.s1, *pairs.s2], 128)
    spearman, pearson = sts.correlations(pairs.gold, sts.cosine_scores(pairs, index, emb))
    assert (ours["spearman"], ours["pearson"]) == (spearman, pearson)
    builtin = sts.evaluate_sts(hashed_encode, senteval_dir, tasks="sickr")
    assert ours["spearman"] == builtin["tasks"]["SICKRelatedness"]["spearman"]["test"]
    assert ours["n_pairs"] == 4927 and 20 < ours["spearman"] < 90


def test_clustering_equals_direct_sklearn(tasks_dir: Path, one_thread) -> None:
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import v_measure_score

    ours = evaluate_clustering(hashed_encode, tasks_dir / "trec-clusters.tsv", n_runs=3)
    lines = (tasks_dir / "trec-clusters.tsv").read_text(encoding="utf-8").splitlines()[1:]
    texts, labels = zip(*(line.split("\t") for line in lines), strict=True)
    emb = hashed_encode(list(texts))
    runs = [
        v_measure_score(
            labels,
            MiniBatchKMeans(6, batch_size=512, n_init=1, random_state=42 + i).fit_predict(emb),
        )
        for i in range(3)
    ]
    assert ours["v_measure"] == pytest.approx(np.mean(runs), rel=1e-12)
    assert ours["v_measure_std"] == pytest.approx(np.std(runs), rel=1e-9, abs=1e-12)
    assert ours["n_clusters"] == 6 and ours["n_texts"] == 500


def test_clustering_finds_separated_clusters(one_thread) -> None:
    texts = [f"{c} item {i}" for c in "abc" for i in range(20)]
    centers = {"a": 0, "b": 1, "c": 2}
    noise = random_encode(texts)[:, :3] * 0.01
    vectors = {t: np.eye(3)[centers[t[0]]] * 10 + n for t, n in zip(texts, noise, strict=True)}
    encode = table_encode(vectors)
    result = evaluate_clustering(encode, ClusteringTask(texts, [t[0] for t in texts]), n_runs=2)
    assert result["v_measure"] == pytest.approx(1.0) and result["v_measure_std"] < 1e-9


# ----------------------------------------------------------------------------- file mistakes
def _mistake_cases(tmp: Path) -> list[tuple[str, Path, int, str]]:
    """(kind, path, line, message part) for each kind of mistake; for a folder, the line is in
    the file ``path`` names after ``|``."""
    ok_corpus = [{"_id": "d1", "text": "one"}, {"_id": "d2", "text": "two"}]
    beir = tmp / "beir"
    write_jsonl(beir / "corpus.jsonl", ok_corpus)
    write_jsonl(beir / "queries.jsonl", [{"_id": "q1", "text": "first"}])
    (beir / "qrels").mkdir()
    write_tsv(beir / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q9\td1\t1"])
    beir2 = tmp / "beir2"
    write_jsonl(beir2 / "corpus.jsonl", ok_corpus)
    write_jsonl(beir2 / "queries.jsonl", [{"_id": "q1", "text": "first"}])
    (beir2 / "qrels").mkdir()
    write_tsv(beir2 / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td7\t1"])
    beir3 = tmp / "beir3"
    (beir3 / "qrels").mkdir(parents=True)
    (beir3 / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": \n')
    bad_jsonl = tmp / "bad.jsonl"
    bad_jsonl.write_text('{"query": "q", "positive": ["p"], "negative": ["n"]}\n{"query": \n')
    return [
        ("pairs", write_tsv(tmp / "p.tsv", ["sentence1\tsentence2\tlbl", "a\tb\t1"]), 1,
         "no column 'label' in the header; its columns are 'sentence1', 'sentence2', 'lbl'"),
        ("pairs", write_tsv(tmp / "l.tsv", ["sentence1\tsentence2\tlabel", "a\tb\t1", "a\tc\t2"]),
         3, "label '2' must be 0 or 1"),
        ("pairs", write_tsv(tmp / "e.tsv", ["sentence1\tsentence2\tlabel"]), 1, "no labelled pairs"),
        ("pairs", write_tsv(tmp / "f.tsv", ["sentence1\tsentence2\tlabel", "a\tb\tc\t1"]), 2,
         "expected 3 fields"),
        ("sts", write_tsv(tmp / "s.tsv", ["sentence1\tsentence2\tscore", "a\tb\thigh"]), 2,
         "score 'high' is not a number"),
        ("clustering", write_tsv(tmp / "c.tsv", ["text\tlabel", "\tx", " \ty"]), 1,
         "no labelled texts to evaluate (2 skipped for an empty text)"),
        ("clustering", write_tsv(tmp / "c2.tsv", ["text\tlabel", "a\tx", "b\t "]), 3,
         "empty label"),
        ("reranking", bad_jsonl, 2, "not valid JSON"),
        ("reranking", write_jsonl(tmp / "k.jsonl", [{"query": "q", "positive": ["p"]}]), 1,
         "no key 'negative'; the object's keys are 'query', 'positive'"),
        ("reranking", write_jsonl(tmp / "t.jsonl", [{"query": "q", "positive": [1], "negative": []}]),
         1, "'positive' must be a list of strings"),
        ("retrieval", beir, 3, "qrels/test.tsv|unknown query id 'q9'"),
        ("retrieval", beir2, 2, "qrels/test.tsv|unknown document id 'd7'"),
        ("retrieval", beir3, 2, "corpus.jsonl|not valid JSON"),
    ]  # fmt: skip


def test_every_file_mistake_is_one_user_error_naming_file_and_line(tmp_path: Path) -> None:
    for kind, path, line, message in _mistake_cases(tmp_path):
        spec = parse_task_specs(f"{kind}:{path}")[0]
        with pytest.raises(UserError) as err:
            check_tasks([spec])
        text = str(err.value)
        inner, _, message = message.rpartition("|")
        file = path / inner if inner else path
        assert "\n" not in text and text.startswith(f"{file}:{line}: "), (text, file, line)
        assert message in text, (text, message)


def test_other_file_mistakes(tmp_path: Path) -> None:
    path = tmp_path / "p.tsv"
    path.write_bytes(b"sentence1\tsentence2\tlabel\na\tb\t1\n\xff\tb\t0\n")
    with pytest.raises(UserError, match=f"{path}:3: not valid UTF-8"):
        read_pair_classification(path)
    corpus = [{"_id": "d1", "text": "a"}, {"_id": 7, "text": "b"}, {"_id": "d1", "text": "c"}]
    folder = tmp_path / "beir"
    write_jsonl(folder / "corpus.jsonl", corpus)
    with pytest.raises(UserError, match=r"corpus.jsonl:3: _id 'd1' again \(first on line 1\)"):
        read_retrieval(folder)
    one_class = write_tsv(tmp_path / "one.tsv", ["sentence1\tsentence2\tlabel", "a\tb\t1"])
    with pytest.raises(UserError, match=f"{one_class}: every pair is labelled 1; need both"):
        read_pair_classification(one_class)


def test_check_tasks_reads_every_file_before_any_encoding(tmp_path, tasks_dir) -> None:
    bad = write_tsv(tmp_path / "bad.tsv", ["sentence1\tsentence2\tscore", "a\tb\t?"])

    def never(texts):
        raise AssertionError("encode ran before every file was checked")

    with pytest.raises(UserError, match="bad.tsv:2"):
        evaluate_tasks([str(tasks_dir / "mrpc-pairs.tsv"), str(bad)], never)


# ----------------------------------------------------------------------------- specs
def test_kinds_are_detected_and_named_by_stem(tasks_dir: Path) -> None:
    names = [
        "wikisplit-retrieval", "sick-graded-retrieval", "snli-reranking.jsonl", "mrpc-pairs.tsv",
        "sick-sts.tsv", "trec-clusters.tsv",
    ]  # fmt: skip
    specs = parse_task_specs(",".join(str(tasks_dir / n) for n in names) + ", stsb,MR")
    got = [(s.name, s.kind) for s in specs]
    assert got == [
        ("wikisplit-retrieval", "retrieval"), ("sick-graded-retrieval", "retrieval"),
        ("snli-reranking", "reranking"), ("mrpc-pairs", "pairs"), ("sick-sts", "sts"),
        ("trec-clusters", "clustering"), ("stsb", None), ("MR", None),
    ]  # fmt: skip
    assert specs[-1].path is None and specs[3].path == tasks_dir / "mrpc-pairs.tsv"


def test_named_and_kinded_specs(tmp_path: Path, tasks_dir: Path) -> None:
    both = write_tsv(tmp_path / "both.tsv", ["sentence1\tsentence2\tlabel\tscore", "a\tb\t1\t3"])
    spec = parse_task_specs([f"mine=sts:{both}", f"pairs:{both}"])
    assert [(s.name, s.kind, s.path) for s in spec] == [
        ("mine", "sts", both),
        ("both", "pairs", both),
    ]
    with pytest.raises(UserError, match="it fits pairs and sts; write KIND:"):
        parse_task_specs(str(both))
    other = write_tsv(tmp_path / "other.tsv", ["a\tb", "x\ty"])
    with pytest.raises(UserError, match="other.tsv: cannot tell the task kind"):
        parse_task_specs(str(other))
    with pytest.raises(UserError, match="unknown task kind 'rerank'; choose from retrieval"):
        parse_task_specs(f"rerank:{tasks_dir / 'snli-reranking.jsonl'}")
    with pytest.raises(UserError, match="no file or folder 'missing.tsv'"):
        parse_task_specs("missing.tsv")
    with pytest.raises(UserError, match="two tasks named 'both'"):
        parse_task_specs([f"pairs:{both}", f"sts:{both}"])


def test_gz_and_csv_read_like_plain_files(tmp_path: Path, tasks_dir: Path) -> None:
    plain = tasks_dir / "mrpc-pairs.tsv"
    gz = tmp_path / "mrpc.tsv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    spec = parse_task_specs(str(gz))[0]
    assert (spec.name, spec.kind) == ("mrpc", "pairs")
    assert read_pair_classification(gz) == read_pair_classification(plain)
    # TSV keeps quotes as text; CSV unquotes and keeps commas and newlines inside quotes
    csv_path = tmp_path / "q.csv"
    csv_path.write_text('Sentence1,SENTENCE2,label\n"a, b","say ""hi""\nthere",1\nc,d,0\n')
    task = read_pair_classification(csv_path)
    assert task.sentence1 == ["a, b", "c"] and task.sentence2 == ['say "hi"\nthere', "d"]
    bad = tmp_path / "bad.csv"
    bad.write_text('sentence1,sentence2,label\n"multi\nline",x,1\nc,d,7\n')
    with pytest.raises(UserError, match="bad.csv:4: label '7'"):
        read_pair_classification(bad)


def test_columns_mapping(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "m.tsv", ["q\tdoc\tgold", "a cat\ta kitten\t1", "a cat\ta car\t0"])
    task = read_pair_classification(path, {"sentence1": "Q", "sentence2": "doc", "label": "gold"})
    assert task.sentence1 == ["a cat", "a cat"] and task.labels == [1, 0]
    with pytest.raises(UserError, match="columns mapping names sentence3"):
        read_pair_classification(path, {"sentence3": "q"})


# ----------------------------------------------------------------------------- the runner
def test_evaluate_tasks_embeds_each_text_once_and_reports(tasks_dir: Path, tmp_path) -> None:
    seen: list[str] = []

    class Counting:  # an encoder object: evaluate_tasks must call its .encode
        def encode(self, texts: list[str]) -> np.ndarray:
            seen.extend(texts)
            return hashed_encode(texts)

    lines: list[str] = []
    specs = parse_task_specs(
        [f"dup=pairs:{tasks_dir / 'mrpc-pairs.tsv'}", str(tasks_dir / "sick-graded-retrieval")]
    )
    results = evaluate_tasks(specs, Counting(), log=lines.append)
    assert len(seen) == len(
        set(seen)
    )  # each distinct text embedded once (the two tasks share none)
    assert set(results) == {"dup", "sick-graded-retrieval"}
    assert results["dup"]["kind"] == "pairs" and results["dup"]["n_pairs"] == 1725
    assert 0 <= results["dup"]["encode_seconds"] <= results["dup"]["seconds"]
    assert lines[0].startswith("dup (pairs): ap 0.") and "n_pairs 1725" in lines[0]
    alone = evaluate_task(specs[0], hashed_encode)
    assert alone["ap"] == results["dup"]["ap"]
    with pytest.raises(ValueError, match="built-in"):
        evaluate_tasks(["stsb"], hashed_encode)
