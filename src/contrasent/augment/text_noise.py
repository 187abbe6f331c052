"""Word-level text noise for denoising auto-encoders (TSDAE; Wang, Reimers & Gurevych, 2021).

TSDAE encodes a damaged sentence and reconstructs the original. The paper's best noise deletes each
word with probability 0.6 (at least one word is kept); it also compared swapping, masking,
replacing and adding words at ratios 0.1-0.9. Every noise here is a pure function of
``(words, rng, ratio)`` drawing only from the ``np.random.Generator`` it is given, so a generator
keyed by (seed, batch, row) reproduces the same noise after a resume on any number of processes.

Words (no NLTK data needed)
---------------------------
:func:`split_words` cuts text into tokens by this rule:

* whitespace separates tokens and is never part of one;
* a *word* is a run of word characters (Unicode letters, digits, marks, ``_``) that may contain
  punctuation strictly between word characters (``don't``, ``state-of-the-art``, ``3.14``,
  ``1,000``, ``U.S.A``, ``and/or``) and may start or end with an apostrophe (``'90s``,
  ``students'``);
* a CJK ideograph or kana character is a word of its own (those scripts write no spaces);
* any other character is punctuation: a run of one repeated character is one token (``...``,
  ``--``, ``!!``), otherwise each character is a token (``."`` -> ``.`` and ``"``).

:func:`join_words` puts one space between tokens except: none before closing punctuation
(``. , ; : ! ? % ) ] }`` and their CJK and typographic forms, closing quotes), none after an
opening one (``( [ {``, opening quotes, ``$ £ € ¥ # ¿ ¡``), none between two CJK words, and
straight double quotes alternate between opening and closing (an unmatched one with only closing
punctuation after it closes). A closing ``’`` right after a word
and two equal punctuation tokens stay spaced (gluing them would make one token). So
``join_words(split_words(t)) == t`` for text written in that canonical spacing (``He said "no"
(twice), then left.``), and ``split_words(join_words(ws)) == ws`` for the tokens of any text:
spacing around punctuation may be normalised, tokens never change. Unlike NLTK's Treebank
tokenizer, clitics stay in their word (``don't`` is one word), which is also what a
language-neutral split can do.

Noises
------
=========  ==================================================================================
delete     each word is dropped with probability ``ratio``; when all would go, one uniformly
           chosen word stays (the paper's default, ``ratio`` 0.6)
swap       each non-overlapping pair of neighbours (words 0-1, 2-3, ...) is swapped with
           probability ``ratio`` (the bigram swap of Hill et al. 2016's sequential DAE, which
           TSDAE builds on)
mask       each word becomes ``mask_token`` with probability ``ratio``
replace    each word becomes a word drawn uniformly from ``vocabulary`` with probability
           ``ratio``
insert     before each word, with probability ``ratio``, a word drawn uniformly from
           ``vocabulary`` is inserted (the paper's "add"; alias ``add``)
=========  ==================================================================================

Note: sentence-transformers' ``DenoisingAutoEncoderLoss`` docstring and its example scripts keep a
word when ``random() < 0.6``, i.e. they delete 40%; its ``DenoisingAutoEncoderDataset.delete``
deletes 60% as the paper does. Here ``ratio`` is always the fraction of words damaged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from contrasent.core.errors import UserError

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD_CHAR = rf"[^\W{_CJK}]"
_TOKEN = re.compile(
    rf"['’]?{_WORD_CHAR}+(?:[^\w\s]+{_WORD_CHAR}+)*(?:['’](?!{_WORD_CHAR}))?"  # a word
    rf"|[{_CJK}]"  # one CJK character
    r"|([^\w\s])\1*"  # punctuation: a run of one repeated character
)
_CJK_RE = re.compile(rf"[{_CJK}]")
CLOSERS = frozenset(".,;:!?%)]}»›”’…。，、！？：；）」』】〕〉》")
OPENERS = frozenset("([{«‹“‘¿¡$£€¥#（「『【〔〈《")
QUOTE = '"'
APOSTROPHES = frozenset("'’")


def split_words(text: str) -> list[str]:
    """Tokens of ``text`` by the module's rule (words, CJK characters, punctuation runs)."""
    return [m.group(0) for m in _TOKEN.finditer(text)]


def _is_punct_run(token: str) -> bool:
    return len(set(token)) == 1 and not token[0].isalnum() and token[0] != "_"


def _is_closer(token: str) -> bool:
    return _is_punct_run(token) and token[0] in CLOSERS


def _ends_in_word_char(token: str) -> bool:
    return bool(token) and (token[-1].isalnum() or token[-1] == "_")


def join_words(words: Sequence[str]) -> str:
    """Text of ``words`` with the module's spacing rule (the inverse of :func:`split_words`)."""
    out: list[str] = []
    closing = False  # the next straight double quote closes one
    glue_next = True  # no space before the first token
    prev = ""
    words = [w for w in words if w]
    last = max((i for i, w in enumerate(words) if not _is_closer(w)), default=-1)
    for i, word in enumerate(words):
        first, punct = word[0], _is_punct_run(word)
        if punct and first == QUOTE:
            # an unmatched quote with only closing punctuation after it closes (a quote opened
            # in an earlier sentence), otherwise quotes alternate
            closing = closing or i == last
            glue_before = closing
            glue_after = closing = not closing
        else:
            glue_before = _is_closer(word)
            glue_after = punct and first in OPENERS
            if glue_before and first in APOSTROPHES and _ends_in_word_char(prev):
                glue_before = False  # "word" "’" glued would read back as the one word "word’"
        if prev and _CJK_RE.fullmatch(word) and _CJK_RE.fullmatch(prev):
            glue_before = True
        if prev and punct and _is_punct_run(prev) and prev[0] == first:
            glue_before = glue_next = False  # "." "." must not become the one token ".."
        if not (glue_next or glue_before):
            out.append(" ")
        out.append(word)
        glue_next, prev = glue_after, word
    return "".join(out)


# ---------------------------------------------------------------- noises on words
def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"noise ratio must be in [0, 1], got {ratio}")


def delete_words(words: Sequence[str], rng: np.random.Generator, ratio: float = 0.6) -> list[str]:
    """Drop each word with probability ``ratio``; one uniformly chosen word stays if all would go."""
    _check_ratio(ratio)
    n = len(words)
    if n == 0:
        return []
    keep = rng.random(n) >= ratio
    if not keep.any():
        keep[rng.integers(n)] = True
    return [w for w, k in zip(words, keep, strict=True) if k]


def swap_words(words: Sequence[str], rng: np.random.Generator, ratio: float) -> list[str]:
    """Swap each non-overlapping neighbour pair (0-1, 2-3, ...) with probability ``ratio``."""
    _check_ratio(ratio)
    out = list(words)
    pairs = len(out) // 2
    if pairs == 0:
        return out
    for p in np.flatnonzero(rng.random(pairs) < ratio):
        i = 2 * int(p)
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def mask_words(
    words: Sequence[str], rng: np.random.Generator, ratio: float, mask_token: str
) -> list[str]:
    """Replace each word by ``mask_token`` with probability ``ratio``."""
    _check_ratio(ratio)
    hit = rng.random(len(words)) < ratio
    return [mask_token if h else w for w, h in zip(words, hit, strict=True)]


def replace_words(
    words: Sequence[str], rng: np.random.Generator, ratio: float, vocabulary: Sequence[str]
) -> list[str]:
    """Replace each word, with probability ``ratio``, by a uniform draw from ``vocabulary``."""
    _check_ratio(ratio)
    _check_vocabulary(vocabulary, "replace")
    out = list(words)
    hit = np.flatnonzero(rng.random(len(out)) < ratio)
    for i, v in zip(hit, rng.integers(len(vocabulary), size=len(hit)), strict=True):
        out[int(i)] = vocabulary[int(v)]
    return out


def insert_words(
    words: Sequence[str], rng: np.random.Generator, ratio: float, vocabulary: Sequence[str]
) -> list[str]:
    """Before each word, with probability ``ratio``, insert a uniform draw from ``vocabulary``."""
    _check_ratio(ratio)
    _check_vocabulary(vocabulary, "insert")
    hit = rng.random(len(words)) < ratio
    draws = iter(rng.integers(len(vocabulary), size=int(hit.sum())))
    out: list[str] = []
    for w, h in zip(words, hit, strict=True):
        if h:
            out.append(vocabulary[int(next(draws))])
        out.append(w)
    return out


def _check_vocabulary(vocabulary: Sequence[str] | None, kind: str) -> None:
    if not vocabulary:
        raise UserError(f"noise {kind!r} needs a non-empty vocabulary of words to draw from")


# ---------------------------------------------------------------- by name, on text
NOISES: dict[str, Callable[..., list[str]]] = {
    "delete": delete_words,
    "swap": swap_words,
    "mask": mask_words,
    "replace": replace_words,
    "insert": insert_words,
}
ALIASES = {"add": "insert"}


def check_noise(
    kind: str,
    ratio: float,
    mask_token: str | None = None,
    vocabulary: Sequence[str] | None = None,
) -> str:
    """Validate a noise setting before training; returns the canonical kind name."""
    name = ALIASES.get(kind, kind)
    if name not in NOISES:
        known = ", ".join(sorted([*NOISES, *ALIASES]))
        raise UserError(f"unknown noise {kind!r}; known: {known}")
    _check_ratio(ratio)
    if name == "mask" and not mask_token:
        raise UserError("noise 'mask' needs a mask token (the tokenizer has none)")
    if name in ("replace", "insert"):
        _check_vocabulary(vocabulary, name)
    return name


def noise_words(
    words: Sequence[str],
    rng: np.random.Generator,
    kind: str = "delete",
    ratio: float = 0.6,
    *,
    mask_token: str | None = None,
    vocabulary: Sequence[str] | None = None,
) -> list[str]:
    """Apply the noise ``kind`` (see the module table) to ``words``."""
    name = check_noise(kind, ratio, mask_token, vocabulary)
    extra: dict[str, Any] = {}
    if name == "mask":
        extra["mask_token"] = mask_token
    elif name in ("replace", "insert"):
        extra["vocabulary"] = vocabulary
    return NOISES[name](words, rng, ratio, **extra)


def noise_text(
    text: str,
    rng: np.random.Generator,
    kind: str = "delete",
    ratio: float = 0.6,
    *,
    mask_token: str | None = None,
    vocabulary: Sequence[str] | None = None,
) -> str:
    """``join_words(noise_words(split_words(text), ...))``; text without words comes back as is."""
    words = split_words(text)
    if not words:
        check_noise(kind, ratio, mask_token, vocabulary)
        return text
    noisy = noise_words(words, rng, kind, ratio, mask_token=mask_token, vocabulary=vocabulary)
    return join_words(noisy)


def tokenizer_words(tokenizer: Any) -> list[str]:
    """Whole-word entries of a subword vocabulary, in id order (a pool for replace/insert).

    WordPiece continuation pieces (``##ing``), special and added tokens and entries with no
    letter are left out; SentencePiece (``▁word``) and byte-level BPE (``Ġword``) word-initial
    pieces are kept without their marker, their other pieces are left out.
    """
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    added = set(getattr(tokenizer, "get_added_vocab", dict)())
    pieces = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    markers = [m for m in ("▁", "Ġ") if sum(t.startswith(m) for t in pieces) > len(pieces) // 10]
    words = []
    for piece in pieces:
        if piece in special or piece in added:
            continue
        if markers:
            if not piece.startswith(markers[0]):
                continue
            piece = piece[len(markers[0]) :]
        elif piece.startswith("##"):
            continue
        if piece and any(c.isalpha() for c in piece) and "[" not in piece and "<" not in piece:
            words.append(piece)
    return words
