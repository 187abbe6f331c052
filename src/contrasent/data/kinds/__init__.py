"""The data kinds, one module each, registered here in one list (as objectives are in
:mod:`contrasent.objectives`): adding a kind = a module defining ``KIND`` + one line below."""

from __future__ import annotations

from contrasent.data.kinds import (
    documents,
    mixture,
    nli,
    pairs,
    scored_pairs,
    sts_texts,
    text,
    text_lines,
)
from contrasent.data.registry import register_data_kind

for _kind in (
    text.KIND,
    pairs.KIND,
    nli.TRIPLETS,
    nli.PAIRS,
    mixture.KIND,
    documents.KIND,
    sts_texts.KIND,
    scored_pairs.KIND,
    text_lines.KIND,
):
    register_data_kind(_kind)
