"""Evaluation of an encoder: STS (SentEval-equal), SentEval transfer tasks, the user's own task
files (retrieval, reranking, pair classification, STS, clustering: :mod:`.tasks`), diagnostics
(alignment / uniformity), plots and result tables. Reads data, never trains.

One function per own-data kind, each taking an encoder (or an encode callable) and the task (a
path, the kind's task object, or its rows from Python: tuples, dicts, columns or a
``datasets.Dataset``) and returning its metrics; ``evaluate_tasks`` runs several by name::

    from contrasent.eval import evaluate_retrieval, evaluate_tasks
    evaluate_retrieval(encoder, "my-beir-folder")  # {"ndcg@10": ..., "mrr@10": ..., ...}
    evaluate_tasks({"dups": ("pairs", [("a", "b", 1), ("c", "d", 0)])}, encoder)
"""

from typing import Any

_OWN = {
    "evaluate_retrieval": "retrieval",
    "evaluate_reranking": "reranking",
    "evaluate_pair_classification": "pair_classification",
    "evaluate_sts_file": "sts_file",
    "evaluate_clustering": "clustering",
}
__all__ = [*_OWN, "evaluate_tasks"]


def __getattr__(name: str) -> Any:
    # Lazy: `import contrasent.eval.sts` should not load scikit-learn and the IR metrics.
    import importlib

    if name in _OWN:
        return getattr(importlib.import_module(f"contrasent.eval.tasks.{_OWN[name]}"), name)
    if name == "evaluate_tasks":
        return importlib.import_module("contrasent.eval.tasks").evaluate_tasks
    raise AttributeError(name)
