"""Duplicate removal and the held-out split of ``contrasent data prepare``.

- Normalisation (:func:`normalize`): NFKC, case-folded, punctuation removed, whitespace runs as
  one space, so "The cat sat." and "the cat  sat" are one text.
- Exact duplicates: a 64-bit BLAKE2 hash of the normalised text.
- Near duplicates: MinHash (datasketch) over character 5-grams of the normalised text, found
  with LSH at an estimated Jaccard similarity >= ``threshold`` (default 0.8).

Bounded memory: both keep at most two generations of ``window`` texts each. When the current
generation is full the older one is dropped, so a duplicate is always found within the last
``window`` kept texts and never further back than ``2 * window``. The state is therefore at
most ``2 * window`` hashes (exact: about 78 bytes each in a Python set, measured) and
``2 * window`` LSH entries (near: about 1.86 KB each at 64 permutations, measured with
tracemalloc by bench/prepare_data.py), whatever the size of the corpus.
- Held-out split (:func:`held_out`): a text is held out when the hash of its normalised form,
  keyed by ``seed``, falls below ``fraction``: a property of the text alone, so re-running on a
  grown corpus keeps every old held-out line held out, and duplicates fall on one side.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from contrasent.core.errors import UserError

_PUNCT = re.compile(r"[^\w\s]+")
_WS = re.compile(r"\s+")
SHINGLE = 5  # characters per shingle: robust to one changed word in a short sentence


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WS.sub(" ", _PUNCT.sub(" ", text)).strip()


def text_hash(text: str, seed: int = 0) -> int:
    """A stable 64-bit hash (not Python's salted ``hash``): the same in every process and run."""
    key = seed.to_bytes(8, "little", signed=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, key=key).digest(), "little")


def held_out(normalized: str, fraction: float, seed: int = 0) -> bool:
    """Whether a text goes to the validation file (see the module docstring)."""
    return fraction > 0 and text_hash(normalized, seed + 1) < fraction * 2.0**64


class ExactDedup:
    """Seen-before test on normalised texts, with two generations of ``window`` hashes."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.current: set[int] = set()
        self.previous: set[int] = set()

    def seen(self, normalized: str) -> bool:
        """True for a duplicate; else remembers the text and returns False."""
        h = text_hash(normalized)
        if h in self.current or h in self.previous:
            return True
        if len(self.current) >= self.window:
            self.previous, self.current = self.current, set()
        self.current.add(h)
        return False


class NearDedup:
    """MinHash-LSH near-duplicate test (Jaccard >= ``threshold``), two generations."""

    def __init__(self, window: int, threshold: float = 0.8, num_perm: int = 64) -> None:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError:
            raise UserError(
                "near-duplicate removal needs datasketch: pip install 'contrasent[prepare]' "
                "(or --near_dup false)"
            ) from None
        if not 0.0 < threshold < 1.0:
            raise UserError(f"--near_threshold must be in (0, 1), got {threshold}")
        self._minhash, self._lsh = MinHash, MinHashLSH
        self.window, self.threshold, self.num_perm = window, threshold, num_perm
        self.current, self.previous = self._new(), None
        self.count = 0

    def _new(self):
        return self._lsh(threshold=self.threshold, num_perm=self.num_perm)

    def signature(self, normalized: str):
        m = self._minhash(num_perm=self.num_perm, seed=1)
        n = len(normalized)
        shingles = {normalized[i : i + SHINGLE] for i in range(max(1, n - SHINGLE + 1))}
        m.update_batch([s.encode() for s in shingles])
        return m

    def seen(self, normalized: str) -> bool:
        """True for a near duplicate of a kept text; else remembers it and returns False."""
        m = self.signature(normalized)
        if self.current.query(m) or (self.previous is not None and self.previous.query(m)):
            return True
        if self.count >= self.window:
            self.previous, self.current, self.count = self.current, self._new(), 0
        self.current.insert(self.count, m)
        self.count += 1
        return False
