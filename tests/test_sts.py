"""STS evaluation: reference numbers, aggregation math, skips, errors, output shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from contrasent.core.errors import UserError
from contrasent.data import senteval
from contrasent.eval import sts
from contrasent.eval.sts import evaluate_sts, resolve_tasks
from contrasent.eval.tables import format_table, write_results
from stand_ins import hashed_encode

# ----------------------------------------------------------------------------- helpers


def never_encode(texts: list[str]) -> np.ndarray:
    raise AssertionError("encode must not run before all files are read and checked")


def write_year(root: Path, task: str, subsets: dict[str, list[tuple[str, str, str]]]) -> Path:
    """SentEval layout for one STS year: rows are (sentence1, sentence2, gold or '')."""
    folder = root / "STS" / f"{task}-en-test"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in subsets.items():
        (folder / f"STS.input.{name}.txt").write_text(
            "".join(f"{a}\t{b}\n" for a, b, _ in rows), encoding="utf-8"
        )
        (folder / f"STS.gs.{name}.txt").write_text(
            "".join(f"{g}\n" for _, _, g in rows), encoding="utf-8"
        )
    return folder


def write_stsb(root: Path, split: str, lines: list[str]) -> Path:
    path = root / "STS" / "STSBenchmark" / f"sts-{split}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_sick(root: Path, name: str, rows: list[str], newline: str = "\n") -> Path:
    path = root / "SICK" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"
    path.write_bytes("".join(r + newline for r in [header, *rows]).encode())
    return path


# Hand-made STS13 (its three subsets): s1 = "anchor" -> [1, 0], s2 = "<subset> k" -> angle theta,
# so the cosine of a pair is cos(theta). None marks a pair shipped without a gold score.
THETAS = {
    "FNWN": [(0.1, 2.0), (0.2, None), (0.5, 3.5), (1.0, 1.0)],
    "headlines": [(0.3, 5.0), (0.6, 2.0), (0.9, 3.0), (1.2, 1.0), (1.5, 0.5), (0.4, None)],
    "OnWN": [(0.2, 3.0), (0.4, 2.5), (0.7, 2.0), (1.4, 1.5)],  # monotone: Spearman exactly 100
}


class VectorEncoder:
    """Looks sentences up in a fixed table and records every sentence it was asked for."""

    def __init__(self) -> None:
        self.table = {"anchor": np.array([1.0, 0.0])}
        for subset, rows in THETAS.items():
            for k, (theta, _) in enumerate(rows):
                self.table[f"{subset} {k}"] = np.array([np.cos(theta), np.sin(theta)])
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        return np.stack([self.table[t] for t in texts])  # float64: kept end to end


@pytest.fixture
def tiny_sts13(tmp_path: Path) -> Path:
    subsets = {}
    for subset, rows in THETAS.items():
        # Stray whitespace around "anchor" must normalise away like SentEval's s.split().
        subsets[subset] = [
            (" anchor " if k % 2 else "anchor", f"{subset}  {k}", "" if g is None else str(g))
            for k, (_, g) in enumerate(rows)
        ]
    write_year(tmp_path, "STS13", subsets)
    return tmp_path


# ----------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm_encode(minilm_dir: Path):
    """Our Encoder's encode (the ST directory of MiniLM) with a per-module memo."""
    from contrasent.model.encoder import Encoder

    model = Encoder.from_pretrained(str(minilm_dir), device="cpu")
    cache: dict[str, np.ndarray] = {}

    def encode(texts: list[str]) -> np.ndarray:
        todo = [t for t in texts if t not in cache]
        if todo:
            cache.update(zip(todo, model.encode(todo, batch_size=64), strict=True))
        return np.stack([cache[t] for t in texts])

    return encode


def test_minilm_sts12_all(minilm_encode) -> None:
    # data_dir=None: found through CONTRASENT_DATA (set in conftest.py).
    res = evaluate_sts(minilm_encode, mode="test", tasks="STS12")
    # MTEB STS12 for all-MiniLM-L6-v2: 72.37 (subsets merged: the "all" setting).
    assert abs(res["tasks"]["STS12"]["spearman"]["all"] - 72.37) < 0.01
    assert res["tasks"]["STS12"]["n_pairs"] == 3108


def test_minilm_stsb_test(minilm_encode, senteval_dir: Path) -> None:
    # The test split alone, through the same reader/embedding/scoring functions evaluate_sts
    # uses: test mode would also embed the dev split, 2,400 more sentences for this check.
    test = senteval.read_stsb(senteval_dir, "test")
    index, emb = sts.embed_unique(minilm_encode, [*test.s1, *test.s2], batch_size=128)
    res = sts.score_splits({"test": test}, {"test": sts.cosine_scores(test, index, emb)})
    assert abs(res["spearman"]["test"] - 82.03) < 0.01  # published STS-B test Spearman
    assert res["n_pairs"] == {"test": 1379}


def test_dev_mode_returns_only_dev_numbers(senteval_dir: Path) -> None:
    res = evaluate_sts(hashed_encode, data_dir=senteval_dir, mode="dev")
    assert res["mode"] == "dev"
    assert list(res["tasks"]) == ["STSBenchmark", "SICKRelatedness"]
    for task in res["tasks"].values():
        assert set(task) == {"spearman", "pearson", "n_pairs"}
        assert set(task["spearman"]) == set(task["pearson"]) == set(task["n_pairs"]) == {"dev"}
    assert res["tasks"]["STSBenchmark"]["n_pairs"] == {"dev": 1500}
    assert res["tasks"]["SICKRelatedness"]["n_pairs"] == {"dev": 500}
    # The same dev numbers as test mode reports, and avg = mean of the dev numbers.
    full = evaluate_sts(hashed_encode, data_dir=senteval_dir, mode="test", tasks="stsb,sickr")
    devs = []
    for name, task in res["tasks"].items():
        assert task["spearman"]["dev"] == pytest.approx(full["tasks"][name]["spearman"]["dev"])
        assert task["pearson"]["dev"] == pytest.approx(full["tasks"][name]["pearson"]["dev"])
        devs.append(task["spearman"]["dev"])
    assert res["avg"] == pytest.approx(np.mean(devs))
    assert "STSBenchmark" in format_table(res) and "STS12" not in format_table(res)


@pytest.mark.slow
def test_minilm_full_table(minilm_encode) -> None:
    res = evaluate_sts(minilm_encode, mode="test")
    print("\n" + format_table(res))
    assert abs(res["tasks"]["STS12"]["spearman"]["all"] - 72.37) < 0.01
    assert abs(res["tasks"]["STSBenchmark"]["spearman"]["test"] - 82.03) < 0.01
    assert abs(res["avg"] - 78.9) < 0.05  # published 7-task "all" average: about 78.9


# ----------------------------------------------------------------------------- math


def test_aggregations_match_hand_computation(tiny_sts13: Path) -> None:
    enc = VectorEncoder()
    res = evaluate_sts(enc, data_dir=tiny_sts13, tasks="sts13", batch_size=3)
    got = res["tasks"]["STS13"]

    golds, sims, sp, pe, sizes = [], [], [], [], []
    for rows in THETAS.values():
        scored = [(theta, g) for theta, g in rows if g is not None]
        g = np.array([g for _, g in scored])
        s = np.cos([theta for theta, _ in scored])
        golds.append(g)
        sims.append(s)
        sp.append(100 * spearmanr(g, s)[0])
        pe.append(100 * pearsonr(g, s)[0])
        sizes.append(len(g))
    g_all, s_all = np.concatenate(golds), np.concatenate(sims)
    expected = {
        "spearman": {
            "all": 100 * spearmanr(g_all, s_all)[0],
            "wmean": np.dot(sp, sizes) / sum(sizes),
            "mean": np.mean(sp),
        },
        "pearson": {
            "all": 100 * pearsonr(g_all, s_all)[0],
            "wmean": np.dot(pe, sizes) / sum(sizes),
            "mean": np.mean(pe),
        },
    }
    for metric in ("spearman", "pearson"):
        assert got[metric] == pytest.approx(expected[metric], abs=1e-9)
        # The data is built so the three aggregations really differ.
        a, w, m = (expected[metric][k] for k in ("all", "wmean", "mean"))
        assert min(abs(a - w), abs(a - m), abs(w - m)) > 1.0
    assert got["subsets"]["OnWN"]["spearman"] == pytest.approx(100.0)
    for name, s, p, n in zip(THETAS, sp, pe, sizes, strict=True):
        assert got["subsets"][name] == pytest.approx({"spearman": s, "pearson": p, "n_pairs": n})
    assert res["avg"] == pytest.approx(expected["spearman"]["all"])

    # Empty gold lines are skipped and counted; their sentences are never embedded.
    assert got["n_pairs"] == 3 + 5 + 4 and got["n_skipped"] == 2
    assert "FNWN 1" not in enc.seen and "headlines 5" not in enc.seen
    # Each distinct (normalised) sentence embedded exactly once, "anchor" included.
    assert sorted(enc.seen) == sorted(set(enc.seen)) and enc.seen.count("anchor") == 1
    assert len(enc.seen) == 1 + 12


def test_real_data_counts_and_json_shape(senteval_dir: Path, tmp_path: Path) -> None:
    res = evaluate_sts(hashed_encode, data_dir=senteval_dir, mode="test", tasks="sts")
    assert res["mode"] == "test" and set(res) == {"mode", "tasks", "avg"}
    assert list(res["tasks"]) == list(sts.TASKS)
    counts = {t: (res["tasks"][t]["n_pairs"], res["tasks"][t]["n_skipped"]) for t in sts.STS_YEARS}
    assert counts == {
        "STS12": (3108, 0),
        "STS13": (1500, 0),
        "STS14": (3750, 0),
        "STS15": (3000, 5500),
        "STS16": (1186, 7997),
    }
    for task in sts.STS_YEARS:
        r = res["tasks"][task]
        assert set(r) == {"spearman", "pearson", "n_pairs", "n_skipped", "subsets"}
        assert set(r["spearman"]) == set(r["pearson"]) == {"all", "wmean", "mean"}
        assert list(r["subsets"]) == list(sts.STS_YEARS[task])
        assert sum(s["n_pairs"] for s in r["subsets"].values()) == r["n_pairs"]
        assert all(set(s) == {"spearman", "pearson", "n_pairs"} for s in r["subsets"].values())
    assert res["tasks"]["STSBenchmark"]["n_pairs"] == {"test": 1379, "dev": 1500}
    assert res["tasks"]["SICKRelatedness"]["n_pairs"] == {"test": 4927, "dev": 500}
    for task in sts.SPLIT_TASKS:
        r = res["tasks"][task]
        assert set(r) == {"spearman", "pearson", "n_pairs"}
        assert set(r["spearman"]) == set(r["pearson"]) == {"test", "dev"}
    summary = [res["tasks"][t]["spearman"]["all"] for t in sts.STS_YEARS] + [
        res["tasks"][t]["spearman"]["test"] for t in sts.SPLIT_TASKS
    ]
    assert res["avg"] == pytest.approx(np.mean(summary))

    out = tmp_path / "out" / "sts.json"
    write_results(res, out)
    assert json.loads(out.read_text()) == res
    assert [p.name for p in out.parent.iterdir()] == ["sts.json"]  # no temp file left

    lines = format_table(res).splitlines()
    assert len(lines) == 5 and lines[0] == lines[2] == lines[4]
    assert [c.strip() for c in lines[1].split("|")[1:-1]] == [*sts.TASKS, "Avg."]
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells == [f"{v:.2f}" for v in summary] + [f"{res['avg']:.2f}"]


def test_stsb_extra_columns_quotes_and_sick_crlf(tmp_path: Path) -> None:
    write_stsb(
        tmp_path,
        "dev",
        [
            'main-news\theadlines\t2016\t0001\t4.0\tHe said "no" \tShe said no\tsrc\tsrc',
            "main-news\theadlines\t2016\t0002\t1.5\tA cat.\tA dog.",
            'main-news\theadlines\t2016\t0003\t0\t"Open quote\tclosed later"',
        ],
    )
    write_sick(tmp_path, "SICK_trial.txt", ["1\tA b\tA c\t3.5\tNEUTRAL"] * 3, newline="\r\n")
    seen: list[str] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return hashed_encode(texts)

    res = evaluate_sts(encode, data_dir=tmp_path, mode="dev")
    assert res["tasks"]["STSBenchmark"]["n_pairs"] == {"dev": 3}
    assert res["tasks"]["SICKRelatedness"]["n_pairs"] == {"dev": 3}
    # Quotes are text (no CSV quoting), extra columns ignored, edge whitespace stripped.
    assert {'He said "no"', "She said no", '"Open quote', 'closed later"'} <= set(seen)
    assert not any("src" in s or s != s.strip() for s in seen)
    # Constant gold (SICK here) gives an undefined correlation: None, not NaN, avg None.
    assert res["tasks"]["SICKRelatedness"]["spearman"]["dev"] is None
    assert res["avg"] is None
    assert format_table(res).splitlines()[3].split("|")[2].strip() == "-"
    write_results(res, tmp_path / "r.json")  # None is valid JSON


# ----------------------------------------------------------------------------- errors


def test_missing_data_dir_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CONTRASENT_DATA", raising=False)
    # The fallbacks beside a checkout exist wherever ../shared does (CI, the README layout).
    monkeypatch.setattr(senteval, "DEFAULT_DIRS", (tmp_path / "no-shared",))
    with pytest.raises(UserError, match="CONTRASENT_DATA"):
        evaluate_sts(never_encode)
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=str(missing)):
        evaluate_sts(never_encode, data_dir=missing)
    monkeypatch.setenv("CONTRASENT_DATA", str(missing))
    with pytest.raises(UserError, match=str(missing)):
        evaluate_sts(never_encode)


def test_missing_file_names_expected_path(tmp_path: Path, tiny_sts13: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    expected = empty / "STS" / "STSBenchmark" / "sts-dev.csv"
    with pytest.raises(UserError, match=str(expected)):
        evaluate_sts(never_encode, data_dir=empty, mode="dev")
    gs = tiny_sts13 / "STS" / "STS13-en-test" / "STS.gs.OnWN.txt"
    gs.unlink()
    with pytest.raises(UserError, match=f"STS13: expected STS.gs.OnWN.txt at {gs}"):
        evaluate_sts(never_encode, data_dir=tiny_sts13, tasks="STS13")


def test_env_var_is_used(monkeypatch: pytest.MonkeyPatch, tiny_sts13: Path) -> None:
    monkeypatch.setenv("CONTRASENT_DATA", str(tiny_sts13))
    res = evaluate_sts(VectorEncoder(), tasks=["STS13"])
    assert res["tasks"]["STS13"]["n_pairs"] == 12


@pytest.mark.parametrize(
    ("file", "content", "line"),
    [
        ("STS.input.FNWN.txt", "anchor\tFNWN 0\nanchor FNWN 1\nanchor\tx\nanchor\ty\n", 2),
        ("STS.input.FNWN.txt", "anchor\tFNWN 0\na\tb\tc\nanchor\tx\nanchor\ty\n", 2),
        ("STS.input.FNWN.txt", "anchor\tFNWN 0\nanchor\tx\n  \ty\nanchor\ty\n", 3),
        ("STS.gs.FNWN.txt", "4.0\n\n3.5\nabc\n", 4),
        ("STS.gs.FNWN.txt", "4.0\n\nnan\n1\n", 3),
    ],
)
def test_malformed_sts_line_names_file_and_line(
    tiny_sts13: Path, file: str, content: str, line: int
) -> None:
    path = tiny_sts13 / "STS" / "STS13-en-test" / file
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=f"{path}:{line}:"):
        evaluate_sts(never_encode, data_dir=tiny_sts13, tasks="STS13")


def test_line_count_mismatch_names_both_files(tiny_sts13: Path) -> None:
    gs = tiny_sts13 / "STS" / "STS13-en-test" / "STS.gs.FNWN.txt"
    gs.write_text("4.0\n\n3.5\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"STS\.input\.FNWN\.txt has 4 lines.*STS\.gs\.FNWN"):
        evaluate_sts(never_encode, data_dir=tiny_sts13, tasks="STS13")


def test_malformed_stsb_and_sick_lines(tmp_path: Path) -> None:
    good = "g\tf\t2016\t1\t3.0\tA b.\tA c."
    stsb = write_stsb(tmp_path, "dev", [good, good, "g\tf\t2016\t3\t3.0\tonly one"])
    sick = write_sick(tmp_path, "SICK_trial.txt", ["1\ta\tb\t3.5\tNEUTRAL", "2\ta\tb\t?\tN"])
    with pytest.raises(UserError, match=f"{stsb}:3:"):
        evaluate_sts(never_encode, data_dir=tmp_path, mode="dev")
    write_stsb(tmp_path, "dev", [good, good, "g\tf\t2016\t3\t\tA b.\tA c."])
    with pytest.raises(UserError, match=f"{stsb}:3: gold score '' is not a number"):
        evaluate_sts(never_encode, data_dir=tmp_path, mode="dev")
    write_stsb(tmp_path, "dev", [good, good])
    with pytest.raises(UserError, match=f"{sick}:3:"):
        evaluate_sts(never_encode, data_dir=tmp_path, mode="dev")
    sick.write_text("1\ta\tb\t3.5\tNEUTRAL\n", encoding="utf-8")  # header missing
    with pytest.raises(UserError, match=f"{sick}:1: expected a header"):
        evaluate_sts(never_encode, data_dir=tmp_path, mode="dev")


def test_invalid_utf8_names_line(tiny_sts13: Path) -> None:
    path = tiny_sts13 / "STS" / "STS13-en-test" / "STS.input.OnWN.txt"
    path.write_bytes(b"anchor\tOnWN 0\nanchor\tOnWN \xff1\n")
    with pytest.raises(UserError, match=f"{path}:2: not valid UTF-8"):
        evaluate_sts(never_encode, data_dir=tiny_sts13, tasks="STS13")


# ----------------------------------------------------------------------------- tasks, output


def test_task_filter_and_aliases() -> None:
    assert resolve_tasks(None, "test") == list(sts.TASKS)
    assert resolve_tasks("sts", "test") == list(sts.TASKS)
    assert resolve_tasks(None, "dev") == ["STSBenchmark", "SICKRelatedness"]
    assert resolve_tasks("sts", "dev") == ["STSBenchmark", "SICKRelatedness"]
    assert resolve_tasks("sickr, STS12,stsb", "test") == [
        "STS12",
        "STSBenchmark",
        "SICKRelatedness",
    ]
    assert resolve_tasks(["sts16", "sts12-16"], "test") == list(sts.STS_YEARS)
    with pytest.raises(UserError, match="STS12 has no dev split"):
        resolve_tasks("STS12", "dev")
    with pytest.raises(UserError, match="unknown STS task 'sts17'"):
        resolve_tasks("sts17", "test")
    with pytest.raises(UserError, match="unknown STS mode"):
        resolve_tasks(None, "train")


def test_write_results_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sts.json"
    write_results({"avg": 1.0}, path)
    with pytest.raises(ValueError):
        write_results({"avg": float("nan")}, path)  # not valid JSON: nothing is written
    assert json.loads(path.read_text()) == {"avg": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["sts.json"]
