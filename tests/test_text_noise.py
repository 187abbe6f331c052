"""Word split / detokenizer and the TSDAE noises (augment/text_noise.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contrasent.augment.text_noise import (
    delete_words,
    insert_words,
    join_words,
    mask_words,
    noise_text,
    noise_words,
    replace_words,
    split_words,
    swap_words,
    tokenizer_words,
)
from contrasent.core.errors import UserError

CANONICAL = [
    ("Hello, world!", ["Hello", ",", "world", "!"]),
    ("don't stop: state-of-the-art, 3.14 and 1,000.", ["don't", "stop", ":", "state-of-the-art",
     ",", "3.14", "and", "1,000", "."]),
    ('He said "no" (twice), then left.', ["He", "said", '"', "no", '"', "(", "twice", ")", ",",
     "then", "left", "."]),
    ("the students' books from the '90s", ["the", "students'", "books", "from", "the", "'90s"]),
    ("the U.S.A. and/or e-mail", ["the", "U.S.A", ".", "and/or", "e-mail"]),
    ("Wait... what?!", ["Wait", "...", "what", "?", "!"]),
    ("It costs $5 (or £4) — 50% off.", ["It", "costs", "$", "5", "(", "or", "£", "4", ")", "—",
     "50", "%", "off", "."]),
    ("A “quoted” word [sic] and ‘single’ ones; done", ["A", "“", "quoted", "”", "word", "[", "sic",
     "]", "and", "‘", "single’", "ones", ";", "done"]),
    ("我爱北京。", ["我", "爱", "北", "京", "。"]),
    ("naïve café Ünïcode", ["naïve", "café", "Ünïcode"]),
    ('a quote closed later."', ["a", "quote", "closed", "later", ".", '"']),
]  # fmt: skip
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "near",
    "the",
    "river",
    "bank",
    "today",
]


def corpus_lines(shared_data: Path) -> list[str]:
    path = shared_data / "corpus" / "wiki1m-head.txt"
    return [t for t in (" ".join(line.split()) for line in path.open(encoding="utf-8")) if t]


@pytest.mark.parametrize(("text", "words"), CANONICAL)
def test_split_and_exact_round_trip_on_canonical_text(text, words):
    assert split_words(text) == words
    assert join_words(words) == text


def test_join_normalises_spacing_but_tokens_survive():
    assert join_words(split_words("a ,b ( c )  d")) == "a, b (c) d"
    assert split_words("a ,b ( c )") == ["a", ",", "b", "(", "c", ")"]
    # tokens that gluing would merge stay apart
    for words in (["a", ".", "."], ["word", "’"], ["$", "$", "5"], ['"', '"']):
        assert split_words(join_words(words)) == words


def test_tokens_survive_a_round_trip_on_the_whole_corpus(shared_data):
    lines = corpus_lines(shared_data)
    bad = [t for t in lines if split_words(join_words(split_words(t))) != split_words(t)]
    assert not bad[:3]
    # and most raw Wikipedia lines come back character for character (quotes opened on an
    # earlier line and HTML fragments are the usual exceptions)
    exact = sum(join_words(split_words(t)) == t for t in lines) / len(lines)
    assert exact > 0.75


def test_deletion_rate_is_the_ratio_over_a_corpus(shared_data):
    lines = corpus_lines(shared_data)
    for ratio in (0.6, 0.3):
        rng = np.random.default_rng(1234)
        total = kept = 0
        for text in lines:
            words = split_words(text)
            total += len(words)
            kept += len(delete_words(words, rng, ratio))
        rate = 1 - kept / total
        assert abs(rate - ratio) < 0.01, (ratio, rate, total)


def test_delete_keeps_a_subsequence_and_always_one_word():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        out = delete_words(WORDS, rng, 0.6)
        it = iter(WORDS)
        assert all(w in it for w in out)  # order-preserving subsequence
        assert delete_words(["alone"], rng, 0.6) == ["alone"]
        assert delete_words(["alone"], rng, 1.0) == ["alone"]
        assert len(delete_words(WORDS, rng, 1.0)) == 1
    assert delete_words(WORDS, np.random.default_rng(0), 0.0) == WORDS
    assert delete_words([], np.random.default_rng(0), 0.6) == []
    assert noise_text("Hello", np.random.default_rng(0)) == "Hello"
    assert noise_text("Hello!", np.random.default_rng(0), ratio=1.0) in ("Hello", "!")


def test_delete_all_but_one_keeps_a_uniform_word():
    counts = np.zeros(5)
    for seed in range(5000):
        (w,) = delete_words(list("abcde"), np.random.default_rng(seed), 1.0)
        counts["abcde".index(w)] += 1
    assert np.all(np.abs(counts / 5000 - 0.2) < 0.03), counts


def test_delete_matches_the_generator_draws():
    rng = np.random.default_rng(7)
    draws = np.random.default_rng(7).random(len(WORDS))
    expected = [w for w, x in zip(WORDS, draws, strict=True) if x >= 0.6]
    assert delete_words(WORDS, rng, 0.6) == expected


def test_determinism_under_a_seed():
    text = " ".join(WORDS)
    for kind, extra in (("delete", {}), ("swap", {}), ("mask", {"mask_token": "[MASK]"}),
                        ("replace", {"vocabulary": ["x", "y"]}),
                        ("insert", {"vocabulary": ["x", "y"]})):  # fmt: skip
        a = noise_text(text, np.random.default_rng(5), kind, 0.5, **extra)
        b = noise_text(text, np.random.default_rng(5), kind, 0.5, **extra)
        c = noise_text(text, np.random.default_rng(6), kind, 0.5, **extra)
        assert a == b
        assert a != c, kind


def test_swap_swaps_disjoint_neighbour_pairs():
    assert swap_words(list("abcde"), np.random.default_rng(0), 1.0) == list("badce")
    assert swap_words(list("abcde"), np.random.default_rng(0), 0.0) == list("abcde")
    assert swap_words(["one"], np.random.default_rng(0), 1.0) == ["one"]
    swapped = pairs = 0
    for seed in range(300):
        out = swap_words(WORDS, np.random.default_rng(seed), 0.4)
        for i in range(0, len(WORDS) - 1, 2):
            pair = out[i : i + 2]
            assert pair in (WORDS[i : i + 2], WORDS[i : i + 2][::-1])
            swapped += pair != WORDS[i : i + 2] and WORDS[i] != WORDS[i + 1]
            pairs += 1
        assert out[len(WORDS) // 2 * 2 :] == WORDS[len(WORDS) // 2 * 2 :]
    assert abs(swapped / pairs - 0.4) < 0.03


def test_mask_replace_insert_exact_effects():
    rng = np.random.default_rng(0)
    assert mask_words(WORDS, rng, 1.0, "[MASK]") == ["[MASK]"] * len(WORDS)
    assert replace_words(WORDS, rng, 1.0, ["zz"]) == ["zz"] * len(WORDS)
    assert insert_words(["a", "b"], rng, 1.0, ["zz"]) == ["zz", "a", "zz", "b"]
    assert mask_words(WORDS, rng, 0.0, "[MASK]") == WORDS
    hits = inserted = total = 0
    for seed in range(300):
        out = mask_words(WORDS, np.random.default_rng(seed), 0.25, "<m>")
        assert len(out) == len(WORDS)
        assert all(o in ("<m>", w) for o, w in zip(out, WORDS, strict=True))
        hits += out.count("<m>")
        ins = insert_words(WORDS, np.random.default_rng(seed), 0.25, ["<i>"])
        assert [w for w in ins if w != "<i>"] == WORDS  # originals stay in order
        inserted += ins.count("<i>")
        total += len(WORDS)
    assert abs(hits / total - 0.25) < 0.02
    assert abs(inserted / total - 0.25) < 0.02
    vocab = ["v0", "v1", "v2"]
    out = replace_words(WORDS, np.random.default_rng(1), 0.5, vocab)
    assert len(out) == len(WORDS)
    assert all(o == w or o in vocab for o, w in zip(out, WORDS, strict=True))


def test_noise_by_name_and_bad_settings():
    rng = np.random.default_rng(0)
    assert noise_words(["a", "b"], rng, "add", 1.0, vocabulary=["z"]) == ["z", "a", "z", "b"]
    assert noise_text("", rng) == ""
    assert noise_text("   ", rng) == "   "
    with pytest.raises(UserError, match="unknown noise 'shuffle'"):
        noise_text("a b", rng, "shuffle")
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        noise_text("a b", rng, "delete", 1.5)
    with pytest.raises(UserError, match="mask token"):
        noise_text("a b", rng, "mask", 0.5)
    with pytest.raises(UserError, match="vocabulary"):
        noise_text("a b", rng, "replace", 0.5, vocabulary=[])
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        noise_text("", rng, "delete", -0.1)  # validated even when there is nothing to damage


def test_tokenizer_words_are_whole_words(minilm_dir):
    from transformers import AutoTokenizer

    words = tokenizer_words(AutoTokenizer.from_pretrained(str(minilm_dir)))
    assert {"the", "house", "running"} <= set(words)
    assert not any(w.startswith("##") or w.startswith("[") for w in words)
    assert all(any(c.isalpha() for c in w) for w in words)
    assert len(words) > 15000
