"""NLI triplets for supervised SimCSE from SentEval's SNLI layout (s1.*, s2.*, labels.*).

SimCSE trains on (premise, entailment hypothesis, contradiction hypothesis): the entailment is
the positive and the contradiction the hard negative. Construction here:

- group the (premise, hypothesis, label) lines by premise text (stripped), in order of first
  appearance;
- every premise with at least one entailment and one contradiction gives exactly ONE triplet:
  its first entailment and its first contradiction in file order. Further hypotheses of the same
  label are counted (`unused hypotheses`) and left out, so a premise never appears twice as an
  anchor (a repeated anchor inside a batch would be a false in-batch negative);
- neutral pairs are counted and unused; label "-" (no gold label, raw SNLI) is a counted skip;
  any other label is a UserError naming file:line.

:func:`read_nli_pairs` keeps every labelled pair with its label (neutral included) for a
classifier objective (SBERT's softmax head, ConSERT's supervision): data kind ``nli_pairs``.

Grouping needs every premise in memory (SNLI+MNLI train is ~1M short lines: fine); the result is
a list of tuples. A ready-made triplet file (SimCSE's `nli_for_simcse.csv`: sent0, sent1,
hard_neg) is read as pairs instead: kind "pairs" with columns
``{"anchor": "sent0", "positive": "sent1", "negative": "hard_neg"}``.
"""

from __future__ import annotations

from contextlib import ExitStack
from itertools import zip_longest
from pathlib import Path

from contrasent.core.errors import UserError, where
from contrasent.data.batches import NLI_LABELS as LABELS
from contrasent.data.readers import BAD_UTF8, EMPTY_FIELD, OnError, ReadStats, open_binary

NO_GOLD = "no gold label"


def nli_files(folder: str | Path, split: str) -> tuple[Path, Path, Path]:
    """The (s1, s2, labels) files of one split; UserError when the folder lacks them."""
    root = Path(folder)
    files = tuple(root / f"{stem}.{split}" for stem in ("s1", "s2", "labels"))
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(
            f"{root}: missing {', '.join(missing)}: expected SentEval's SNLI layout "
            f"(s1.{split}, s2.{split}, labels.{split})"
        )
    return files  # type: ignore[return-value]


def _parallel_lines(files: tuple[Path, ...], stats: ReadStats, on_error: OnError):
    """Yield (line number, [decoded line of each file]) for files read in lockstep.

    Unequal line counts raise. Invalid UTF-8 in any file raises, or (skip mode) drops that line
    number from all files so they stay aligned.
    """
    with ExitStack() as stack:
        handles = [stack.enter_context(open_binary(f)) for f in files]
        for line, raws in enumerate(zip_longest(*handles), 1):
            if any(r is None for r in raws):
                short = files[raws.index(None)]
                raise UserError(
                    f"{where(short, line)}: file ends early; s1, s2 and labels must have one "
                    "line per pair"
                )
            stats.lines += 1
            try:
                texts = [r.decode("utf-8").rstrip("\r\n") for r in raws]
            except UnicodeDecodeError:
                bad = next(f for f, r in zip(files, raws, strict=True) if not _is_utf8(r))
                if on_error == "skip":
                    stats.skip(BAD_UTF8)
                    continue
                raise UserError(
                    f"{where(bad, line)}: invalid UTF-8; fix the file or set on_error: skip"
                ) from None
            yield line, texts


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_nli_pairs(
    folder: str | Path, split: str = "train", on_error: OnError = "raise"
) -> tuple[list[tuple[str, str, int]], ReadStats]:
    """Every labelled (premise, hypothesis, label id) pair of one SentEval SNLI-style folder, in
    file order; label ids index :data:`LABELS` (0 entailment, 1 neutral, 2 contradiction).

    Label "-" (no gold label) and pairs with an empty side are counted skips; any other label is
    a UserError naming file:line. ``stats.info`` counts the pairs per label.
    """
    files = nli_files(folder, split)
    stats = ReadStats(f"{Path(folder) / ('{s1,s2,labels}.' + split)}")
    pairs: list[tuple[str, str, int]] = []
    counts = dict.fromkeys(LABELS, 0)
    for line, (premise, hypothesis, label) in _parallel_lines(files, stats, on_error):
        premise, hypothesis, label = premise.strip(), hypothesis.strip(), label.strip()
        if label == "-":
            stats.skip(NO_GOLD)
            continue
        if label not in counts:
            raise UserError(f"{where(files[2], line)}: unknown label {label!r}; expected {LABELS}")
        if not premise or not hypothesis:
            stats.skip(EMPTY_FIELD)
            continue
        counts[label] += 1
        pairs.append((premise, hypothesis, LABELS.index(label)))
    stats.rows = len(pairs)
    stats.info = {f"{k} pairs": v for k, v in counts.items()}
    if not pairs:
        raise UserError(f"{folder}: no labelled pair in split {split!r} ({stats.summary()})")
    return pairs, stats


def read_nli_triplets(
    folder: str | Path, split: str = "train", on_error: OnError = "raise"
) -> tuple[list[tuple[str, str, str]], ReadStats]:
    """(premise, entailment, contradiction) triplets from one SentEval SNLI-style folder.

    Returns the triplets (order of each premise's first appearance) and the counts:
    `rows` = triplets; `info` = pairs per label, premises, premises without both labels,
    unused hypotheses.
    """
    pairs, stats = read_nli_pairs(folder, split, on_error)
    entail, contra = LABELS.index("entailment"), LABELS.index("contradiction")
    groups: dict[str, list] = {}  # premise -> [first entailment, first contradiction, n_e, n_c]
    for premise, hypothesis, label in pairs:
        group = groups.setdefault(premise, [None, None, 0, 0])
        if label == entail:
            group[0] = group[0] if group[0] is not None else hypothesis
            group[2] += 1
        elif label == contra:
            group[1] = group[1] if group[1] is not None else hypothesis
            group[3] += 1
    triplets = [(p, g[0], g[1]) for p, g in groups.items() if g[0] is not None and g[1] is not None]
    stats.rows = len(triplets)
    unused = sum(g[2] + g[3] - 2 for g in groups.values() if g[0] is not None and g[1] is not None)
    stats.info = {
        **stats.info,
        "premises": len(groups),
        "premises without entailment+contradiction": len(groups) - len(triplets),
        "unused hypotheses (beyond the first of a label)": unused,
    }
    if not triplets:
        raise UserError(f"{folder}: no premise has both an entailment and a contradiction")
    return triplets, stats
