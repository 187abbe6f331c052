"""Model cards: the ``README.md`` of a saved model folder, in the sentence-transformers style.

YAML front matter (``library_name: sentence-transformers``, tags, ``base_model``, ``datasets``,
...) followed by the model's details, usage for sentence-transformers and for contrasent, how it
was trained and how it scores. ``Encoder.save`` writes a minimal card; training passes the run's
real numbers through ``info`` (keys documented on :func:`write_model_card`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from contrasent.core.fileio import atomic_write_text
from contrasent.core.results import own_task_tables, own_tasks, sts_summary, transfer_summary

CARD_FILE = "README.md"
BASE_TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction", "contrasent"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_id(name: str | None) -> str | None:
    """``name`` when it looks like a Hugging Face hub id (not a local path), else None: the
    hub validates ``base_model`` against its model ids."""
    if not name or os.path.exists(name) or not _HUB_ID.match(name):
        return None
    return name


#: how a data file is named (never a hub dataset id, which the front matter's datasets lists)
_DATA_SUFFIXES = (".txt", ".gz", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".bz2")
#: `SentenceTransformer("org/name")` / `from_pretrained('org/name')` in a card's usage snippet
_CARD_ID = re.compile(r"""(?:SentenceTransformer|from_pretrained)\(\s*['"]([^'"]+)['"]""")
_CACHE_ID = re.compile(r"models--([^/]+?)--([^/]+)(?:/|$)")  # the hub cache's folder names


def base_model_id(name: str | None) -> str | None:
    """The hub id of the base model ``name``: itself when it is one; for a local folder the id
    that folder was downloaded as (the hub cache's folder name), else the one its own card's
    usage snippet or front matter (``base_model``) names, else its config's ``_name_or_path``."""
    if hub_id(name):
        return name
    if not name or not os.path.isdir(name):
        return None
    cached = _CACHE_ID.search(os.path.abspath(name))
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    card, config = os.path.join(name, CARD_FILE), os.path.join(name, "config.json")
    found: list[str | None] = []
    if os.path.isfile(card):
        text = _read(card)
        found += _CARD_ID.findall(text)
        found.append(_card_base(text))
    if os.path.isfile(config):
        import json

        with contextlib.suppress(ValueError, AttributeError):
            found.append(json.loads(_read(config)).get("_name_or_path"))
    return next((f for f in found if f and hub_id(f) and f != name), None)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _card_base(text: str) -> str | None:
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except (yaml.YAMLError, IndexError):
        return None
    base = meta.get("base_model") if isinstance(meta, dict) else None
    return base if isinstance(base, str) else None


def hub_datasets(names: Any) -> list[str]:
    """The entries of ``names`` that can be hub dataset ids (local files stay in the body)."""
    return [
        n for n in names or []
        if hub_id(n) and not n.lower().endswith(_DATA_SUFFIXES)
    ]  # fmt: skip


def _front_matter(info: Mapping[str, Any]) -> str:
    tags = list(dict.fromkeys([*BASE_TAGS, *(info.get("tags") or [])]))
    meta: dict[str, Any] = {"library_name": "sentence-transformers"}
    meta["pipeline_tag"] = "sentence-similarity"
    meta["tags"] = tags
    base = base_model_id(info.get("base_model"))
    if base:
        meta["base_model"] = base
    datasets = hub_datasets(info.get("datasets"))
    if datasets:
        meta["datasets"] = datasets
    for key in ("language", "license"):
        if info.get(key):
            meta[key] = info[key]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _table(header: list[str], *rows: list[str]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def own_tables(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    """Markdown tables of the tasks on the user's own files: one per kind, a row per task
    (before and after training when both are known)."""
    labelled = [("before", before), ("after", after)] if before else [(None, after)]
    lines: list[str] = []
    for kind, (names, body) in own_task_tables(labelled).items():
        digits = 2 if kind == "sts" else 4
        rows = [[label, *("-" if v is None else f"{v:.{digits}f}" for v in values)]
                for label, values in body]  # fmt: skip
        lines += [f"#### {kind}", "", *_table(["task", *names], *rows), ""]
    return lines


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def sts_table(results: Mapping[str, Any]) -> list[str]:
    """Markdown rows of an ``evaluate_sts`` result (SimCSE's summary columns)."""
    row = sts_summary(results)
    return _table(list(row), [_fmt(v) for v in row.values()])


def transfer_table(results: Mapping[str, Any]) -> list[str]:
    """Markdown rows of an ``evaluate_transfer`` result."""
    row = transfer_summary(results)
    return _table(list(row), [_fmt(v) for v in row.values()])


def _details(name: str, info: Mapping[str, Any]) -> list[str]:
    enc = info.get("encoder") or {}
    lines = [f"# {name}", ""]
    method = info.get("method")
    base = info.get("base_model")
    what = "This is a [sentence-transformers](https://www.SBERT.net) model"
    if method:  # a training run's card; a plain Encoder.save only names where it came from
        what += f" trained with contrasent ({method})"
    elif base:
        what += " saved by contrasent"
    what += f" from `{base}`" if base else ""
    known = base_model_id(base)
    what += f" (`{known}`)" if known and known != base else ""
    dim = f"a {enc['dimension']}-dimensional" if enc.get("dimension") else "a dense"
    lines += [
        f"{what}. It maps sentences and paragraphs to {dim} vector space for semantic textual "
        "similarity, semantic search, clustering and classification.",
        "",
        "## Model details",
        "",
    ]
    facts = [
        ("Base model", f"`{base}`" if base else None),
        ("Method", method),
        ("Objective", f"`{info['objective']}`" if info.get("objective") else None),
        ("Pooling", f"`{enc['pooling']}`" if enc.get("pooling") else None),
        ("Output dimension", enc.get("dimension")),
        (
            "Maximum sequence length",
            f"{enc['max_seq_length']} tokens" if enc.get("max_seq_length") else None,
        ),
        ("Normalized embeddings", enc.get("normalize")),
        ("Similarity function", "cosine similarity"),
        ("Training data", ", ".join(info["datasets"]) if info.get("datasets") else None),
    ]
    lines += [f"- **{k}:** {v}" for k, v in facts if v is not None]
    return [*lines, ""]


def _usage(name: str) -> list[str]:
    return [
        "## Usage",
        "",
        "### sentence-transformers",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{name}")',
        'sentences = ["A man is playing a guitar.", "Someone plays an instrument."]',
        "embeddings = model.encode(sentences)",
        "print(model.similarity(embeddings, embeddings))",
        "```",
        "",
        "### contrasent",
        "",
        "```python",
        "from contrasent import Encoder",
        "",
        f'encoder = Encoder.from_pretrained("{name}")',
        'embeddings = encoder.encode(["A man is playing a guitar."], batch_size=64)',
        "```",
        "",
        "```bash",
        f"contrasent eval --model {name} --tasks full --mode test",
        "```",
        "",
    ]


def _training(info: Mapping[str, Any]) -> list[str]:
    train = info.get("training") or {}
    recipe = info.get("recipe")
    if not train and not recipe:
        return []
    lines = ["## Training", ""]
    facts = [
        ("Steps", train.get("steps")),
        ("Epochs", train.get("epochs")),
        ("Global batch size", train.get("batch_size")),
        ("Training sentences/pairs seen", train.get("samples")),
        ("Training time", _duration(train["time_s"]) if train.get("time_s") is not None else None),
        ("Hardware", train.get("hardware")),
    ]
    lines += [f"- **{k}:** {v}" for k, v in facts if v is not None]
    if recipe:
        text = recipe if isinstance(recipe, str) else yaml.safe_dump(dict(recipe), sort_keys=False)
        lines += ["", "Recipe:", "", "```yaml", text.rstrip("\n"), "```"]
    return [*lines, ""]


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _evaluation(info: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    if info.get("sts") and own_tasks(info["sts"]):
        lines += [
            "### Your tasks (cosine similarity)",
            "",
            *own_tables(info.get("sts_before"), info["sts"]),
        ]
    if info.get("sts") and "avg" in info["sts"]:  # STS tasks were evaluated
        sts = info["sts"]
        lines += [
            f"### STS (Spearman x100, cosine similarity, {sts.get('mode', 'test')} mode)",
            "",
            "STS12-16 merge each year's subsets into one correlation (SimCSE's \"all\"); STS-B "
            "and SICK-R report their test split (dev in dev mode).",
            "",
        ]
        if "avg" in (info.get("sts_before") or {}):
            lines += ["Before training:", "", *sts_table(info["sts_before"]), "", "After:", ""]
        lines += [*sts_table(sts), ""]
    if info.get("transfer"):
        tr = info["transfer"]
        lines += [
            f"### SentEval transfer tasks (accuracy x100, {tr.get('mode')} mode)",
            "",
            "Logistic regression on frozen embeddings, SentEval's protocol "
            f"(k-fold {tr['classifier']['kfold']}, {tr['classifier']['optim']}).",
            "",
            *transfer_table(tr),
            "",
        ]
    diag = info.get("diagnostics")
    if diag and diag.get("alignment") is not None:
        lines += [
            f"Alignment {diag['alignment']:.4f}, uniformity {diag['uniformity']:.4f} "
            f"(Wang & Isola 2020, on STS-B {diag.get('split', 'dev')}; lower is better).",
            "",
        ]
    return ["## Evaluation", "", *lines] if lines else []


def render_model_card(info: Mapping[str, Any], name: str = "path/to/model") -> str:
    """The card's Markdown text (see :func:`write_model_card` for ``info``)."""
    name = info.get("model_name") or name
    parts = [_front_matter(info), *_details(name, info), *_usage(name)]
    parts += [*_training(info), *_evaluation(info)]
    if info.get("citation"):
        parts += ["## Citation", "", "```bibtex", info["citation"], "```", ""]
    return "\n".join(parts)


def write_model_card(folder: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    """Write ``folder/README.md`` (atomically) and return its path.

    ``info`` keys (all optional; unknown keys are ignored):

    * ``model_name`` (str): title and the id in the usage snippets (default: the folder name);
    * ``base_model`` (str): the model training started from (a hub id goes into the front matter);
    * ``method`` (str, e.g. "SimCSE (unsupervised)") and ``objective`` (str, e.g. "simcse_unsup");
    * ``datasets`` (list[str]): training data (hub ids or file names);
    * ``encoder`` (dict): ``pooling``, ``normalize``, ``max_seq_length``, ``dimension``;
    * ``recipe`` (dict or YAML text): the training configuration;
    * ``training`` (dict): ``steps``, ``epochs``, ``batch_size``, ``samples``, ``time_s``,
      ``hardware``;
    * ``sts`` / ``sts_before`` (dict): evaluation results after / before training (STS tasks,
      and the user's own task files under ``tasks`` with their ``kind``);
    * ``transfer`` (dict): ``evaluate_transfer`` results;
    * ``diagnostics`` (dict): ``results["diagnostics"]`` of ``evaluate_sts(diagnostics=True)``;
    * ``tags`` (list[str]), ``language`` (str), ``license`` (str), ``citation`` (BibTeX str).
    """
    folder = Path(folder)
    path = folder / CARD_FILE
    atomic_write_text(path, render_model_card(info, name=folder.name))
    return path
