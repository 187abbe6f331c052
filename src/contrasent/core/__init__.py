"""The bottom layer, imported by every other: user errors, atomic file and folder writes, keyed
randomness, cross-process collectives and launch facts, typed options from mappings, result
summaries and the version. Nothing here knows about models, data or methods."""
