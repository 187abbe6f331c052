"""The ``documents`` data kind: SpanBatch global batches, exactly resumable, keyed spans, counted
short documents, and one clear error (or a counted skip) per bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contrasent.core.errors import UserError
from contrasent.core.rng import keyed_rng
from contrasent.data.kinds.documents import SHORT_DOCUMENT, SPANS, DocumentOptions
from contrasent.data.readers import BAD_UTF8, LONG_LINE
from contrasent.data.registry import DATA_KINDS, DataSpec, build_stream, data_options
from contrasent.data.span_batch import SpanBatch
from contrasent.data.spans import SpanSampler


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def corpus(tmp_path: Path, lengths: list[int], name: str = "docs.txt") -> Path:
    """One document a line, ``lengths[i]`` whitespace words each."""
    path = tmp_path / name
    path.write_text("".join(words(n, f"d{i}w") + "\n" for i, n in enumerate(lengths)))
    return path


def spec(path, **options) -> DataSpec:
    opts = {"min_span_len": 2, "max_span_len": 5, "span_tokens": "whitespace", **options}
    path = [str(p) for p in path] if isinstance(path, list) else str(path)
    return DataSpec(kind="documents", path=path, options=opts, shuffle_buffer=100)


def take(stream, n: int) -> list[SpanBatch]:
    return [next(stream) for _ in range(n)]


def test_registered_with_its_batch_and_options():
    kind = DATA_KINDS["documents"]
    assert kind.batch_type is SpanBatch and kind.options is DocumentOptions
    opts = data_options(spec("x.txt", num_anchors=3))
    assert opts.spans.num_anchors == 3 and opts.spans.min_document_tokens == 30


@pytest.mark.parametrize("cache_tokens", [32_000_000, 0], ids=["cached", "streamed"])
def test_stream_is_deterministic_and_resumes_exactly(tmp_path, cache_tokens):
    # 23 documents, 3 too short (< 2 * 5 * 2 = 20 words); 5 batches of 4 per epoch
    lengths = [30 + i for i in range(20)] + [5, 19, 0]
    path = corpus(tmp_path, lengths)
    s = spec(path, cache_tokens=cache_tokens)
    s.epochs = 2
    straight = build_stream(s, 4, 7, None)
    assert straight.steps_per_epoch == 5 and straight.total_steps == 10
    assert straight.stats[0].skipped == {SHORT_DOCUMENT: 2, "empty line": 1}
    assert straight.stats[0].rows == 20
    batches = list(straight)
    assert len(batches) == 10 and [b.index for b in batches] == list(range(10))
    assert all(b.short_documents == 2 for b in batches)
    # every usable document once per epoch, in an order of its own per epoch
    epochs = [[src for b in batches[e * 5 : e * 5 + 5] for src in b.sources] for e in (0, 1)]
    assert len(set(epochs[0])) == 20 and set(epochs[0]) == set(epochs[1])
    assert epochs[0] != epochs[1]
    # the same again, and resumed from every position (across the epoch boundary too)
    again = build_stream(s, 4, 7, None)
    assert list(again) == batches
    for k in (1, 4, 5, 7):
        first = build_stream(s, 4, 7, None)
        take(first, k)
        resumed = build_stream(s, 4, 7, None)
        resumed.load_state_dict(first.state_dict())
        assert list(resumed) == batches[k:], k
    # another seed: another order and other spans
    assert list(build_stream(s, 4, 8, None)) != batches


def test_spans_are_keyed_per_batch_and_document(tmp_path):
    path = corpus(tmp_path, [40] * 8)
    s = spec(path)
    stream = build_stream(s, 4, 3, None)
    sampler = SpanSampler(data_options(s).spans)
    for batch in take(stream, 2):
        for d, source in enumerate(batch.sources):
            line = int(source.rsplit(":", 1)[1])
            doc = sampler.prepare(words(40, f"d{line - 1}w"))
            anchors, positives, spans = sampler.sample(doc, keyed_rng(3, SPANS, batch.index, d))
            assert batch.anchors[d] == anchors and batch.positives[d] == positives
            assert batch.spans[d] == spans
    # a process's slice is the same documents and spans: nothing depends on the world size
    half = batch.slice(2, 4)
    assert (half.offset, half.index, half.anchors) == (2, batch.index, batch.anchors[2:])
    assert half.anchor_keys() == batch.anchor_keys()[4:]


def test_model_tokens_and_the_shared_corpus(tokenizer, shared_data):
    s = DataSpec(
        kind="documents",
        path=[
            str(shared_data / "corpus" / "wikitext-2-raw-test.txt"),
            str(shared_data / "corpus" / "gutenberg" / "blake-poems.txt"),
        ],
        options={
            "document_format": ["wikitext", "book"],
            "window_words": 1024,
            "min_span_len": 16,
            "max_span_len": 64,
        },
    )
    stream = build_stream(s, 4, 42, tokenizer)
    corpus = stream.corpus  # type: ignore[attr-defined]
    # the filter counts the tokens the sampler samples from: " " + text, no special tokens
    from contrasent.data.documents import read_documents

    docs = [
        d
        for path, fmt in zip(s.paths, ["wikitext", "book"], strict=True)
        for d in read_documents(path, fmt, window_words=1024)
    ]
    n_tokens = [len(tokenizer(" " + d.text, add_special_tokens=False)["input_ids"]) for d in docs]
    short = sum(n < 2 * 64 * 2 for n in n_tokens)
    assert 0 < short < len(docs) / 10
    assert (corpus.lengths.seen, corpus.short_documents) == (len(docs), short)
    assert stream.stats[0].skipped == {SHORT_DOCUMENT: short}
    assert stream.steps_per_epoch == (len(docs) - short) // 4
    batch = next(stream)
    assert batch.max_span_len == 64 and len(batch.anchor_texts) == 8
    assert len(batch.positive_texts) == 16
    for text in batch.anchor_texts + batch.positive_texts:
        assert 14 <= len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 66


# -- bad input: one clear error each, or a counted skip ----------------------------------------


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="empty.txt: no documents to sample spans from"):
        build_stream(spec(empty), 2, 0, None)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(UserError, match="blank.txt: no documents to sample spans from"):
        build_stream(spec(blank), 2, 0, None)
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="has no .txt or .txt.gz files"):
        build_stream(spec(tmp_path / "folder"), 2, 0, None)
    with pytest.raises(UserError, match="no such file or folder"):
        build_stream(spec(tmp_path / "missing.txt"), 2, 0, None)


def test_all_documents_too_short(tmp_path):
    path = corpus(tmp_path, [3, 12, 7])
    with pytest.raises(UserError) as err:
        build_stream(spec(path), 2, 0, None)
    msg = str(err.value)
    assert msg.startswith(f"{path}: no document is long enough for span sampling")
    assert "3 documents of 3 to 12 whitespace tokens" in msg
    assert "num_anchors 2 * max_span_len 5 * 2 needs 20" in msg
    assert "max_span_len <= 3 would admit the longest document" in msg


def test_fewer_usable_documents_than_a_batch(tmp_path):
    path = corpus(tmp_path, [40, 3])
    with pytest.raises(UserError, match="1 usable rows, fewer than one batch of 2"):
        build_stream(spec(path), 2, 0, None)


def test_one_huge_line(tmp_path):
    path = tmp_path / "huge.txt"
    path.write_text(words(30, "a") + "\n" + "x" * 5000 + "\n" + words(30, "b") + "\n")
    with pytest.raises(UserError, match=r"huge\.txt:2: line longer than 800 bytes"):
        build_stream(spec(path, max_document_chars=200), 2, 0, None)
    s = spec(path, max_document_chars=200)
    s.on_error = "skip"
    stream = build_stream(s, 2, 0, None)
    assert stream.stats[0].skipped == {LONG_LINE: 1} and stream.stats[0].rows == 2
    # within the limit a one-line document is a document (here one that is long enough)
    ok = build_stream(spec(corpus(tmp_path, [3000, 25], "long.txt")), 2, 0, None)
    assert ok.stats[0].rows == 2


def test_non_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(
        (words(30, "a") + "\n\xff\xfe broken\n" + words(30, "b") + "\n").encode("latin-1")
    )
    with pytest.raises(UserError, match=r"bad\.txt:2: invalid UTF-8"):
        build_stream(spec(path), 2, 0, None)
    s = spec(path)
    s.on_error = "skip"
    assert build_stream(s, 2, 0, None).stats[0].skipped == {BAD_UTF8: 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_span_len": 6}, "min_span_len .6. must be <= max_span_len .5."),
        ({"num_anchors": 0}, "num_anchors must be a positive integer, got 0"),
        (
            {"sampling_strategy": "overlap"},
            "option sampling_strategy must be one of 'none', 'subsuming', 'adjacent' or null, got 'overlap'",
        ),
        ({"max_span_length": 5}, "unknown option 'max_span_length' .did you mean max_span_len.."),
        ({"document_format": "wiki"}, "option document_format must be one of 'lines', 'wikitext'"),
        ({"window_words": 0}, "window_words must be >= 1"),
    ],
)
def test_bad_options_are_one_line_before_reading(options, message):
    with pytest.raises(UserError, match=r"data.options \(kind documents\): " + message):
        data_options(spec("unused.txt", **options))


def test_max_span_len_above_the_model_length(tmp_path, tokenizer):
    path = corpus(tmp_path, [40] * 4)
    big = spec(path, span_tokens="model", max_span_len=600, min_span_len=32)
    with pytest.raises(
        UserError,
        match=r"max_span_len \(600\) plus 2 special tokens exceeds the "
        r"model's maximum length 512; use max_span_len <= 510",
    ):
        build_stream(big, 2, 0, tokenizer)
    train_len = spec(path, span_tokens="model", max_span_len=64, min_span_len=8)
    train_len.max_seq_length = 32  # the training truncation is the limit that counts
    with pytest.raises(UserError, match="use max_span_len <= 30"):
        build_stream(train_len, 2, 0, tokenizer)


def test_settings_that_do_not_apply(tmp_path):
    path = corpus(tmp_path, [40] * 4)
    s = spec(path)
    s.dedup_in_batch = True
    with pytest.raises(UserError, match="dedup_in_batch does not apply"):
        build_stream(s, 2, 0, None)
    s = spec(path)
    s.format = "tsv"
    with pytest.raises(UserError, match="set data.options.document_format"):
        build_stream(s, 2, 0, None)
    s = spec([str(path), str(path)], document_format=["lines"])
    with pytest.raises(UserError, match="lists 1 formats for 2 data.path entries"):
        build_stream(s, 2, 0, None)


def test_changed_span_settings_refuse_to_resume(tmp_path):
    path = corpus(tmp_path, [40] * 8)
    first = build_stream(spec(path), 2, 0, None)
    take(first, 1)
    other = build_stream(spec(path, max_span_len=6), 2, 0, None)
    with pytest.raises(UserError, match="cannot resume the data stream exactly.*options"):
        other.load_state_dict(first.state_dict())


def test_sampled_lengths_stay_inside_the_settings(tmp_path):
    path = corpus(tmp_path, [20 + 7 * i for i in range(16)])
    batches = list(build_stream(spec(path, num_positives=3), 4, 1, None))
    for b in batches:
        for spans, doc_len in zip(b.spans, [len(a[0]) for a in b.anchors], strict=True):
            assert doc_len > 0
            for (s, e), group in zip(spans.anchors, spans.positives, strict=True):
                assert 2 <= e - s <= 5 and len(group) == 3
    assert np.mean([len(t.split()) for b in batches for t in b.anchor_texts]) > 3


def test_a_to_batch_declaring_index_gets_the_batch_number():
    """The generic streams extension the documents kind uses: ``to_batch(rows, dataset, *,
    index)`` is called with the global batch number; a two-argument one still works."""
    from contrasent.data.batches import SentenceBatch
    from contrasent.data.streams import EpochStream, RowSource

    seen = []

    def keyed(rows, dataset=None, *, index):
        seen.append(index)
        return SentenceBatch([f"{index}:{r}" for r in rows])

    rows = [f"r{i}" for i in range(6)]

    def read(stats):
        stats.rows = len(rows)
        return iter(rows)

    source = RowSource("mem", read, 0, 0, 0)
    stream = EpochStream(source, 2, 2, True, False, {}, 6, keyed)
    texts = [b.texts for b in stream]
    assert seen == list(range(6)) and texts[3] == ["3:r0", "3:r1"]
    plain = EpochStream(source, 2, 1, True, False, {}, 6, lambda r, d: SentenceBatch(list(r)))
    assert [b.index for b in plain] == [0, 1, 2]


def test_without_a_scan_the_stream_counts_as_it_reads(tmp_path):
    path = corpus(tmp_path, [30] * 6 + [4] + [30] * 2)
    s = spec(path)
    s.scan, s.epochs = False, None
    stream = build_stream(s, 2, 0, None)
    assert stream.steps_per_epoch is None and stream.stats == []
    batches = take(stream, 6)  # 8 usable documents: 4 batches an epoch
    assert [b.index for b in batches] == list(range(6))
    assert batches[-1].short_documents == 1  # the short one was read by then
    scanned = spec(path)
    scanned.epochs = None
    assert take(build_stream(scanned, 2, 0, None), 6) == batches  # the same batches
    resumed = build_stream(s, 2, 0, None)
    first = build_stream(s, 2, 0, None)
    take(first, 5)
    resumed.load_state_dict(first.state_dict())
    assert next(resumed) == batches[5]


def test_a_shuffle_buffer_smaller_than_the_documents_is_a_warning(tmp_path, caplog):
    """The DeCLUTR reference shuffles the whole file: a buffer of fewer documents than the scan
    counted (20 usable of 21 lines) is a warning naming both numbers; enough buffer is silent."""
    path = corpus(tmp_path, [30 + i for i in range(20)] + [5])
    for buffer, warned in [(19, True), (20, False), (1000, False)]:
        caplog.clear()
        s = spec(path)
        s.shuffle_buffer = buffer
        with caplog.at_level("WARNING", logger="contrasent.data.kinds.documents"):
            build_stream(s, 4, 7, None)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert bool(warnings) == warned, (buffer, warnings)
        if warned:
            (message,) = warnings
            assert f"data.shuffle_buffer {buffer} is smaller than its 20 documents" in message
            assert "data.shuffle_buffer 20 shuffles them uniformly" in message
