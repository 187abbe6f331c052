"""Own-data tasks given from Python, kept in this process under ``memory:<fingerprint>``.

A task spec then reads ``NAME=KIND:memory:<fingerprint>`` like ``NAME=KIND:PATH``: it goes into
``eval.tasks`` and the run's recorded config, and the fingerprint (a hash of the checked task's
content) says which data it was. The same data passed again gives the same spec (resume
continues with the same evaluation); a spec whose data was not passed in this process is one
clear error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from contrasent.core.errors import UserError

MEMORY_PREFIX = "memory:"
_TASKS: dict[str, tuple[str, Any]] = {}  # memory:<fingerprint> -> (kind, task)


def fingerprint(kind: str, task: Any) -> str:
    """A hash of the kind and the task's content (same rows, same fingerprint, whichever form
    they came in: list, columns or Dataset)."""
    content = json.dumps([kind, dataclasses.asdict(task)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def register(kind: str, task: Any) -> str:
    """Keep ``task`` (the kind's checked task object) -> its ``memory:<fingerprint>`` id."""
    key = f"{MEMORY_PREFIX}{fingerprint(kind, task)}"
    _TASKS[key] = (kind, task)
    return key


def lookup(memory_id: str, kind: str, name: str) -> Any:
    """The task registered under ``memory_id``; UserError when this process has none."""
    found = _TASKS.get(memory_id)
    if found is None:
        raise UserError(
            f"eval task {name!r}: its data ({memory_id}) was passed from Python and is not in "
            "this process; pass the same data again, e.g. contrasent.train(config, "
            f"eval_tasks={{{name!r}: ({kind!r}, data)}})"
        )
    if found[0] != kind:
        raise UserError(f"eval task {name!r}: {memory_id} is a {found[0]} task, not {kind}")
    return found[1]
