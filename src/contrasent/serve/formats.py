"""The output formats of `contrasent embed`, by file suffix: defined once, torch- and numpy-free
(the command line checks an output name before anything heavy loads)."""

from __future__ import annotations

FORMATS = {".npy": "npy", ".parquet": "parquet", ".jsonl": "jsonl"}
