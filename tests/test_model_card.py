"""Model cards: front matter, the run's real numbers, and the card Encoder.save writes."""

from __future__ import annotations

from pathlib import Path

import yaml

from contrasent.model.card import hub_id, render_model_card
from contrasent.train.card import write_run_card as write_model_card


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


STS = {
    "mode": "test",
    "tasks": {
        "STS12": {"spearman": {"all": 68.4012}},
        "STSBenchmark": {"spearman": {"test": 76.8543, "dev": 81.0}},
    },
    "avg": 72.62775,
}
TRANSFER = {
    "mode": "fasttest",
    "classifier": {"kfold": 5, "optim": "rmsprop"},
    "tasks": {"MR": {"acc": 81.18, "devacc": 81.5}, "TREC": {"acc": 89.4, "devacc": 85.0}},
    "avg": 85.29,
}


def test_card_reflects_the_run(tmp_path: Path) -> None:
    info = {
        "base_model": "bert-base-uncased",
        "method": "SimCSE (unsupervised)",
        "objective": "simcse_unsup",
        "datasets": ["princeton-nlp/datasets-for-simcse"],
        "encoder": {"pooling": "cls", "normalize": False, "max_seq_length": 32, "dimension": 768},
        "recipe": {"train": {"lr": 3e-5, "batch_size": 64}, "objective": {"temperature": 0.05}},
        "training": {"steps": 15625, "time_s": 5025.4, "batch_size": 64, "hardware": "1x A100"},
        "sts": STS,
        "sts_before": {**STS, "avg": 40.0},
        "transfer": TRANSFER,
        "diagnostics": {"alignment": 0.2412, "uniformity": -2.3011, "split": "dev"},
        "tags": ["simcse"],
    }
    path = write_model_card(tmp_path / "final", info)
    text = path.read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "sentence-transformers"
    assert meta["base_model"] == "bert-base-uncased"
    assert meta["datasets"] == ["princeton-nlp/datasets-for-simcse"]
    assert {"sentence-transformers", "sentence-similarity", "simcse"} <= set(meta["tags"])
    for snippet in ("68.40", "76.85", "72.63", "40.00", "81.18", "89.40", "85.29",
                    "15625", "1h 23m 45s", "lr: 3.0e-05", "`cls`", "768", "0.2412", "-2.3011",
                    'SentenceTransformer("final")', 'Encoder.from_pretrained("final")',
                    "@inproceedings{gao2021simcse"):  # fmt: skip
        assert snippet in text, snippet
    assert text.index("Before training") < text.index("40.00") < text.index("72.63")


def test_local_base_model_stays_out_of_front_matter(tmp_path: Path) -> None:
    assert hub_id(str(tmp_path)) is None and hub_id("org/model-v1.5") == "org/model-v1.5"
    text = render_model_card({"base_model": str(tmp_path)})
    assert "base_model" not in front_matter(text) and str(tmp_path) in text
    assert "## Training" not in text and "## Evaluation" not in text  # nothing invented


def test_encoder_save_writes_minimal_card(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from contrasent.model.encoder import Encoder

    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooling="cls_before_pooler", device="cpu")
    out = tmp_path / "saved"
    enc.save(out)
    text = (out / "README.md").read_text()
    assert front_matter(text)["library_name"] == "sentence-transformers"
    assert str(tiny_bert_dir) in text and "`cls_before_pooler`" in text and "32-dimensional" in text
    assert f'SentenceTransformer("{out}")' in text
    # a reload keeps the origin, and a card with the run's numbers replaces the minimal one
    again = Encoder.from_pretrained(str(out), device="cpu")
    assert again.base_model == str(tiny_bert_dir)
    again.save(out, card={"sts": STS, "training": {"steps": 7}})
    text = (out / "README.md").read_text()
    assert "76.85" in text and "**Steps:** 7" in text and str(tiny_bert_dir) in text
    SentenceTransformer(str(out), device="cpu")  # the card does not disturb loading


def test_run_card_info_from_recipe(tmp_path: Path) -> None:
    from contrasent.train.card import run_card_info

    recipe = {
        "model": {"name_or_path": "bert-base-uncased", "pooling": "cls"},
        "objective": {"name": "simcse_unsup", "temperature": 0.05},
        "data": {"kind": "text", "path": "data/wiki1m_for_simcse.txt"},
        "train": {"batch_size": 64, "lr": 3e-5},
    }
    sts = {**STS, "diagnostics": {"alignment": 0.2, "uniformity": -2.5, "split": "dev"}}
    info = run_card_info(recipe, steps=125, time_s=61.0, sts=sts, transfer=TRANSFER)
    assert info["method"] == "SimCSE (unsupervised)"
    assert info["datasets"] == ["data/wiki1m_for_simcse.txt"]
    text = write_model_card(tmp_path, info).read_text()
    meta = front_matter(text)
    assert meta["base_model"] == "bert-base-uncased" and "simcse_unsup" in meta["tags"]
    assert "datasets" not in meta and "data/wiki1m_for_simcse.txt" in text  # a file: body only
    for snippet in ("**Steps:** 125", "1m 01s", "**Global batch size:** 64", "76.85", "89.40",
                    "alignment 0.2000".capitalize(), "temperature: 0.05"):  # fmt: skip
        assert snippet in text, snippet


def test_local_base_model_named_by_its_own_card_or_config(tmp_path: Path, minilm_dir: Path) -> None:
    """A local folder as the base: the front matter names the hub model it is (its card's usage
    snippet, the hub cache's folder name, or its config), never a path."""
    text = render_model_card({"base_model": str(minilm_dir), "datasets": [str(minilm_dir / "x.txt"),
                              "wiki1m.txt", "princeton-nlp/datasets-for-simcse"]})  # fmt: skip
    meta = front_matter(text)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["princeton-nlp/datasets-for-simcse"]
    assert str(minilm_dir) in text  # the body still says where it came from
    cached = tmp_path / "models--org--name" / "snapshots" / "abc"
    cached.mkdir(parents=True)
    assert front_matter(render_model_card({"base_model": str(cached)}))["base_model"] == "org/name"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text('{"_name_or_path": "google-bert/bert-base-uncased"}')
    assert front_matter(render_model_card({"base_model": str(bare)}))["base_model"] == (
        "google-bert/bert-base-uncased"
    )
