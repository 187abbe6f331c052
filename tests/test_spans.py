"""DeCLUTR span sampling against its distributions, bounds and the length filter.

Fixed seeds, many draws: the tolerances are several standard errors wide, the seeds fixed, so
the tests are deterministic and a wrong Beta, bound or placement rule fails them.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
from scipy import stats as sps

from contrasent.core.errors import UserError
from contrasent.data.span_batch import SpanBatch, make_span_batch
from contrasent.data.spans import (
    LengthStats,
    SpanConfig,
    SpanSampler,
    TokenizedDocument,
    relation_counts,
    sample_spans,
    span_relation,
)

PAPER = SpanConfig(num_anchors=2, num_positives=2, min_span_len=32, max_span_len=512)


def draw(config: SpanConfig, n_docs: int, seed: int, lengths=(2048, 2600, 5000)):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_docs):
        n = lengths[k % len(lengths)]
        out.append((n, sample_spans(n, config, rng)))
    return out


@functools.cache
def expected_floor_mean(a: float, b: float, low: int, high: int) -> float:
    """E[int(Beta(a, b) * (high - low) + low)] = low + sum_k P(X * (high - low) >= k)."""
    k = np.arange(1, high - low + 1)
    return low + float(sps.beta.sf(k / (high - low), a, b).sum())


def lengths_of(spans):
    return np.array([e - s for s, e in spans])


def test_anchor_and_positive_lengths_follow_their_betas():
    draws = draw(PAPER, 6000, seed=1)
    anchors = lengths_of([a for _, d in draws for a in d.anchors])
    positives = lengths_of([p for _, d in draws for g in d.positives for p in g])
    assert len(anchors) == 12000 and len(positives) == 24000
    for values, (a, b) in ((anchors, (4, 2)), (positives, (2, 4))):
        mean = expected_floor_mean(a, b, 32, 512)
        se = values.std() / np.sqrt(len(values))
        assert abs(values.mean() - mean) < 4 * se, (a, b, values.mean(), mean)
        # the whole distribution: floor(.) + U(0, 1) undoes the integer cut
        jitter = np.random.default_rng(0).random(len(values))
        ks = sps.kstest((values - 32 + jitter) / 480, sps.beta(a, b).cdf)
        assert ks.pvalue > 1e-3, (a, b, ks)
    assert abs(anchors.mean() - (32 + 480 * 4 / 6)) < 3 and abs(positives.mean() - 192) < 3
    assert anchors.min() >= 32 and anchors.max() <= 511 and positives.min() >= 32


def relation_shares(anchor, starts: range, length: int) -> dict[str, float]:
    """Share of each relation among positives of `length` at every start (span_relation's
    rules, vectorised)."""
    a0, a1 = anchor
    p0 = np.arange(starts.start, starts.stop)
    p1 = p0 + length
    subsumed = (a0 <= p0) & (p1 <= a1)
    subsuming = ~subsumed & (p0 <= a0) & (a1 <= p1)
    adjacent = ~subsumed & ~subsuming & ((p1 == a0) | (p0 == a1))
    overlapping = ~subsumed & ~subsuming & ~adjacent & (p0 < a1) & (a0 < p1)
    kinds = {"subsumed": subsumed, "subsuming": subsuming, "adjacent": adjacent}
    kinds["overlapping"] = overlapping
    return {k: float(v.mean()) for k, v in kinds.items() if v.any()}


def test_default_positives_mix_matches_uniform_starts():
    """Given each drawn (anchor, length), the start is uniform on the reference's interval:
    the observed adjacent/overlap/subsumed/subsuming counts match the exact expectation."""
    for config, seed in ((PAPER, 2), (SpanConfig(2, 2, 16, 64), 3)):
        draws = draw(
            config,
            4000,
            seed,
            lengths=(config.min_document_tokens, config.min_document_tokens + 999),
        )
        observed: dict[str, int] = {}
        expected: dict[str, float] = {}
        for n, doc in draws:
            for (a0, a1), group in zip(doc.anchors, doc.positives, strict=True):
                for p0, p1 in group:
                    length = p1 - p0
                    starts = range(max(0, a0 - length), min(a1, n - length) + 1)
                    assert p0 in starts
                    for kind, share in relation_shares((a0, a1), starts, length).items():
                        expected[kind] = expected.get(kind, 0) + share
                    kind = span_relation((a0, a1), (p0, p1))
                    observed[kind] = observed.get(kind, 0) + 1
        assert set(observed) == {"adjacent", "overlapping", "subsumed", "subsuming"}
        total = sum(observed.values())
        for kind, e in expected.items():
            sd = np.sqrt(e * (1 - e / total))
            assert abs(observed.get(kind, 0) - e) < 4 * sd + 1, (config, kind, observed, expected)


def test_subsuming_and_adjacent_strategies():
    for strategy, kind in (("subsuming", "subsumed"), ("adjacent", "adjacent")):
        config = SpanConfig(2, 3, 32, 512, strategy)
        draws = draw(config, 2000, seed=4)
        counts = relation_counts([d for _, d in draws])
        assert counts == {kind: 2000 * 2 * 3}
        # length: Beta(2, 4) scaled to [min, anchor length] (subsuming) or [min, 512]
        got, want = [], []
        for n, doc in draws:
            for (a0, a1), group in zip(doc.anchors, doc.positives, strict=True):
                high = a1 - a0 if strategy == "subsuming" else min(512, max(a0, n - a1))
                want.append(expected_floor_mean(2, 4, 32, high) if high > 32 else 32)
                got.extend(p1 - p0 for p0, p1 in group)
                if strategy == "adjacent":  # never flush with the document's first token
                    assert all(p0 > 0 for p0, p1 in group if p1 == a0)
        got_a = np.array(got)
        assert abs(got_a.mean() - np.repeat(want, 3).mean()) < 4 * got_a.std() / np.sqrt(len(got))


@pytest.mark.parametrize("seed", range(3))
def test_bounds_never_crossed(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(400):
        a, p = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        big = int(rng.integers(1, 80))
        small = int(rng.integers(1, big + 1))
        strategy = ["none", "subsuming", "adjacent"][int(rng.integers(3))]
        if strategy == "adjacent" and a == 1 and 2 * small >= big:
            strategy = "none"
        config = SpanConfig(a, p, small, big, strategy)
        n = int(rng.integers(config.min_document_tokens, 3 * config.min_document_tokens + 1))
        doc = sample_spans(n, config, rng)
        assert len(doc.anchors) == a and all(len(g) == p for g in doc.positives)
        for s, e in list(doc.anchors) + [x for g in doc.positives for x in g]:
            assert 0 <= s < e <= n and small <= e - s <= big
        ordered = sorted(doc.anchors)
        for (_, e0), (s1, _) in zip(ordered, ordered[1:], strict=False):
            assert s1 - e0 >= big  # disjoint, a whole free slot apart
        for anchor, group in zip(doc.anchors, doc.positives, strict=True):
            assert all(span_relation(anchor, x) != "disjoint" for x in group)


def test_short_document_raises_in_the_pure_sampler():
    with pytest.raises(ValueError, match="2047 tokens is shorter than the 2048"):
        sample_spans(2047, PAPER, np.random.default_rng(0))


def test_determinism_and_per_document_keys():
    one = draw(PAPER, 50, seed=7)
    assert one == draw(PAPER, 50, seed=7)
    assert one != draw(PAPER, 50, seed=8)
    sampler = SpanSampler(SpanConfig(2, 2, 2, 5, span_tokens="whitespace"))
    docs = [TokenizedDocument((f"d{k} " * 30).split(), f"f:{k}") for k in range(4)]

    def keyed(k):
        return np.random.default_rng(np.random.SeedSequence([0, 99, k]))

    full = make_span_batch(docs, sampler, [keyed(k) for k in range(4)])
    part = make_span_batch(docs[2:], sampler, [keyed(k) for k in range(2, 4)], offset=2)
    assert part.anchors == full.anchors[2:] and part.positives == full.positives[2:]
    assert full.slice(2, 4) == part


def test_config_errors_are_one_clear_line_each():
    bad = {
        "min_span_len (65) must be <= max_span_len (64)": dict(min_span_len=65, max_span_len=64),
        "num_anchors must be a positive integer, got 0": dict(num_anchors=0),
        "num_positives must be a positive integer": dict(num_positives=-1),
        "min_span_len must be a positive integer": dict(min_span_len=0),
        "sampling_strategy must be one of": dict(sampling_strategy="nearby"),
        "span_tokens must be one of": dict(span_tokens="chars"),
        "adjacent with num_anchors 1 needs": dict(
            num_anchors=1, sampling_strategy="adjacent", min_span_len=32, max_span_len=64
        ),
    }
    for message, options in bad.items():
        with pytest.raises(UserError, match=re.escape(message)):
            SpanConfig(**options).check()  # type: ignore[arg-type]
    with pytest.raises(
        UserError, match=r"plus 2 special tokens exceeds .* 512; use max_span_len <= 510"
    ):
        PAPER.check(model_max_length=512, num_special_tokens=2)
    SpanConfig(max_span_len=510).check(model_max_length=512, num_special_tokens=2)
    assert SpanConfig(sampling_strategy=None).sampling_strategy == "none"  # the reference's null
    assert SpanConfig(sampling_strategy="Adjacent").sampling_strategy == "adjacent"


def test_length_filter_counts_and_explains():
    lengths = LengthStats(PAPER)
    assert [lengths.add(n) for n in (100, 5000, 2047, 2048)] == [False, True, False, True]
    assert (lengths.seen, lengths.too_short, lengths.usable) == (4, 2, 2)
    assert "2 skipped as shorter than 2048 model tokens (lengths 100 to 5000)" in lengths.summary()
    lengths.check("corpus")  # some usable: no error

    short = LengthStats(PAPER)
    for n in (300, 1500, 90):
        short.add(n)
    with pytest.raises(UserError) as err:
        short.check("corpus.txt")
    msg = str(err.value)
    assert "3 documents of 90 to 1500 model tokens" in msg
    assert "num_anchors 2 * max_span_len 512 * 2 needs 2048" in msg
    assert "max_span_len <= 375 would admit the longest" in msg
    assert "max_span_len <= 22 with min_span_len <= 22 every document" in msg
    with pytest.raises(UserError, match="no documents to sample spans from"):
        LengthStats(PAPER).check("empty.txt")


def test_model_token_spans(minilm_dir, shared_data):
    from transformers import AutoTokenizer

    from contrasent.data.documents import read_documents

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    with pytest.raises(UserError, match="use max_span_len <= 254"):
        SpanSampler(SpanConfig(2, 2, 16, 255), tok, max_length=256)
    with pytest.raises(UserError, match="needs the model's tokenizer"):
        SpanSampler(SpanConfig(2, 2, 16, 64))
    sampler = SpanSampler(SpanConfig(2, 2, 16, 64), tok, max_length=256)
    path = shared_data / "corpus" / "wikitext-2-raw-test.txt"
    docs = [d for _, d in zip(range(12), read_documents(path, "wikitext"), strict=False)]
    lengths = sampler.lengths()
    prepared = [sampler.prepare(d.text, d.source, lengths) for d in docs]
    assert lengths.seen == 12 and lengths.too_short == sum(p is None for p in prepared)
    kept = [p for p in prepared if p is not None]
    first = kept[0]
    want = tok(" " + docs[0].text, add_special_tokens=False)["input_ids"]
    assert first.tokens.tolist() == want and first.source == docs[0].source
    rng = np.random.default_rng(5)
    exact = total = 0
    for _ in range(10):
        batch = make_span_batch(kept, sampler, rng)
        for doc, texts, spans in zip(kept, batch.anchors, batch.spans, strict=True):
            for text, (s, e) in zip(texts, spans.anchors, strict=True):
                assert not text.startswith("#")
                ids = tok(text, add_special_tokens=False)["input_ids"]
                exact += ids == doc.tokens[s:e].tolist()
                total += 1
                assert abs(len(ids) - (e - s)) <= 2  # re-tokenizing a decoded span
    assert exact / total > 0.9


def test_whitespace_spans_and_batch_layout():
    sampler = SpanSampler(SpanConfig(2, 3, 2, 4, span_tokens="whitespace"))
    words = [f"w{i}" for i in range(40)]
    docs = [TokenizedDocument(words, "a:1"), TokenizedDocument(words[:20], "b:1")]
    batch = make_span_batch(docs, sampler, np.random.default_rng(0), index=3, offset=8)
    assert len(batch) == 2 and (batch.num_anchors, batch.num_positives) == (2, 3)
    assert (batch.index, batch.offset, batch.sources) == (3, 8, ["a:1", "b:1"])
    for d, doc in enumerate(docs):
        for i, (s, e) in enumerate(batch.spans[d].anchors):
            assert batch.anchors[d][i] == " ".join(doc.tokens[s:e])
            for j, (ps, pe) in enumerate(batch.spans[d].positives[i]):
                assert batch.positives[d][i][j] == " ".join(doc.tokens[ps:pe])
    flat_a, flat_p = batch.anchor_texts, batch.positive_texts
    assert flat_a == [
        batch.anchors[0][0],
        batch.anchors[0][1],
        batch.anchors[1][0],
        batch.anchors[1][1],
    ]
    # positives anchor-major: reshape [4 anchors, 3] lines each anchor up with its positives
    assert [flat_p[3 * k : 3 * k + 3] for k in range(4)] == [
        g for doc in batch.positives for g in doc
    ]
    half = batch.slice(1, 2)
    assert (len(half), half.offset, half.index, half.sources) == (1, 9, 3, ["b:1"])
    assert half.anchors == batch.anchors[1:] and half.spans == batch.spans[1:]
    with pytest.raises(ValueError, match="same numbers of anchors"):
        SpanBatch([["a", "b"], ["c"]], [[["p"], ["q"]], [["r"]]])
    with pytest.raises(ValueError, match="at least one document"):
        make_span_batch([], sampler, np.random.default_rng(0))


def test_bpe_spans_like_the_references_roberta(shared_data):
    """A byte-level BPE tokenizer (RoBERTa's kind, trained here on a few articles): the text is
    tokenized with a leading space, spans decode to bare pieces and get the cleanup of
    tokenization spaces the reference's transformers 3.x applied."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from contrasent.data.documents import read_documents

    path = shared_data / "corpus" / "wikitext-2-raw-test.txt"
    docs = [d for _, d in zip(range(6), read_documents(path, "wikitext"), strict=False)]
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([d.text for d in docs], vocab_size=800, special_tokens=specials)
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        **dict(
            zip(
                ("bos_token", "pad_token", "eos_token", "unk_token", "mask_token"),
                specials,
                strict=True,
            )
        ),
        model_max_length=512,
    )
    with pytest.raises(UserError, match="use max_span_len <= 510"):
        SpanSampler(PAPER, tok)  # model_max_length 512, 2 special tokens
    sampler = SpanSampler(SpanConfig(2, 2, 16, 64), tok)
    doc = sampler.tokenize(docs[1].text)
    assert tok.convert_ids_to_tokens(doc.tokens[:1].tolist())[0].startswith("Ġ")
    rng = np.random.default_rng(0)
    exact = total = cleaned = 0
    for _ in range(50):
        anchors, _, spans = sampler.sample(doc, rng)
        for text, (s, e) in zip(anchors, spans.anchors, strict=True):
            raw = tok.decode(doc.tokens[s:e].tolist(), clean_up_tokenization_spaces=False)
            # cleanup only removes spaces, and removes those before "," and "."
            assert text.replace(" ", "") == raw.replace(" ", "")
            assert " ," not in text and " ." not in text
            cleaned += text != raw
            exact += len(tok(text, add_special_tokens=False)["input_ids"]) == e - s
            total += 1
    assert exact / total > 0.9
    assert cleaned > total / 2  # WikiText spaces its punctuation: cleanup matters
