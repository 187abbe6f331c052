"""Document readers for span sampling: formats, counted skips, errors naming file:line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from contrasent.core.errors import UserError
from contrasent.data.documents import (
    EMPTY_DOCUMENT,
    LONG_DOCUMENT,
    document_files,
    read_documents,
)
from contrasent.data.readers import BAD_UTF8, EMPTY_LINE, LONG_LINE, ReadStats


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_lines_format_plain_and_gz(tmp_path):
    text = "first  document\twith tabs\n\n   \nsecond one\r\n"
    for path in (write(tmp_path / "d.txt", text), tmp_path / "d.txt.gz"):
        if path.name.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode()))
        stats = ReadStats(str(path))
        docs = list(read_documents(path, "lines", stats=stats))
        assert [d.text for d in docs] == ["first document with tabs", "second one"]
        assert [d.source for d in docs] == [f"{path}:1", f"{path}:4"]
        assert stats.rows == 2 and stats.lines == 4 and stats.skipped == {EMPTY_LINE: 2}


def test_invalid_utf8_names_file_line_or_is_counted(tmp_path):
    path = write(tmp_path / "bad.txt", b"good line\nbad \xff byte\nlast\n")
    with pytest.raises(UserError, match=r"bad\.txt:2: invalid UTF-8"):
        list(read_documents(path))
    stats = ReadStats(str(path))
    docs = list(read_documents(path, on_error="skip", stats=stats))
    assert [d.text for d in docs] == ["good line", "last"]
    assert stats.skipped == {BAD_UTF8: 1}


def test_wikitext_titles_start_documents_sections_do_not(tmp_path):
    path = write(
        tmp_path / "wiki.txt",
        "preamble text\n"
        " = First Article = \r\n"
        " \r\n"
        " Intro of the first .\r\n"
        " = = History = = \r\n"
        " More text .\r\n"
        " = = = Deeper = = = \r\n"
        " q = \r\n"
        " = not a title because it does not end so\r\n"
        " = Empty Article = \n"
        " = Second = \n"
        " Body two .\n",
    )
    stats = ReadStats(str(path))
    docs = list(read_documents(path, "wikitext", stats=stats))
    assert [(d.title, d.text) for d in docs] == [
        (None, "preamble text"),
        (
            "First Article",
            "Intro of the first . More text . q = = not a title because it does not end so",
        ),
        ("Second", "Body two ."),
    ]
    assert docs[1].source == f"{path}:2"
    assert stats.skipped == {EMPTY_DOCUMENT: 1} and stats.rows == 3


def test_shared_wikitext_has_its_62_articles(shared_data):
    path = shared_data / "corpus" / "wikitext-2-raw-test.txt"
    docs = list(read_documents(path, "wikitext"))
    assert len(docs) == 62  # the README's count; " = Qualified ... " table rows are no titles
    assert docs[0].title == "Robert Boulter"
    assert not any(" = = " in d.text for d in docs)  # section headings dropped
    assert sum(len(d.text.split()) for d in docs) > 200_000


def test_book_is_one_document_and_folders_are_read_in_name_order(shared_data):
    folder = shared_data / "corpus" / "gutenberg"
    files = document_files(folder)
    assert [f.name for f in files] == sorted(f.name for f in files) and len(files) == 17
    stats = ReadStats(str(folder))
    docs = list(read_documents(folder, "book", stats=stats))
    assert len(docs) == 17 and stats.rows == 17
    assert [d.source for d in docs] == [f"{f}:1" for f in files]
    emma = files[0].read_text(encoding="utf-8")
    assert docs[0].text == " ".join(emma.split())


def test_paragraphs_are_blank_line_blocks(tmp_path):
    path = write(tmp_path / "p.txt", "a b\nc\n\n\nd e\n  \nf\n")
    docs = list(read_documents(path, "paragraphs"))
    assert [(d.text, d.source) for d in docs] == [
        ("a b c", f"{path}:1"),
        ("d e", f"{path}:5"),
        ("f", f"{path}:7"),
    ]


def test_windows_cut_documents_into_consecutive_words(tmp_path):
    words = [f"w{i}" for i in range(25)]
    path = write(tmp_path / "b.txt", " ".join(words[:7]) + "\n" + " ".join(words[7:]) + "\n")
    stats = ReadStats(str(path))
    docs = list(read_documents(path, "book", window_words=10, stats=stats))
    assert [d.text.split() for d in docs] == [words[:10], words[10:20], words[20:]]
    assert [d.window for d in docs] == [0, 1, 2] and stats.rows == 3
    assert docs[1].name == f"{path}:1 (window 1)"
    # a one-line document is windowed the same way
    path2 = write(tmp_path / "l.txt", " ".join(words) + "\n")
    assert [d.text for d in read_documents(path2, window_words=10)] == [d.text for d in docs]


def test_too_long_document_is_an_error_or_a_counted_skip(tmp_path):
    path = write(tmp_path / "b.txt", "short line\n" + "x" * 50 + "\n")
    with pytest.raises(UserError, match=r"b\.txt:1: document longer than 40 characters"):
        list(read_documents(path, "book", max_document_chars=40))
    stats = ReadStats(str(path))
    assert (
        list(read_documents(path, "book", max_document_chars=40, on_error="skip", stats=stats))
        == []
    )
    assert stats.skipped == {LONG_DOCUMENT: 1}


def test_one_huge_line_is_never_read_whole(tmp_path):
    path = write(tmp_path / "huge.txt", "ok\n" + "y" * 5000 + "\nafter\n")
    with pytest.raises(UserError, match=r"huge\.txt:2: line longer than 400 bytes"):
        list(read_documents(path, max_document_chars=100))
    stats = ReadStats(str(path))
    docs = list(read_documents(path, max_document_chars=100, on_error="skip", stats=stats))
    assert [d.text for d in docs] == ["ok", "after"]  # reading goes on after the long line
    assert stats.skipped == {LONG_LINE: 1} and stats.lines == 3
    gz = tmp_path / "huge.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    docs = list(read_documents(gz, max_document_chars=100, on_error="skip"))
    assert [d.text for d in docs] == ["ok", "after"]
    # the byte limit: a line of exactly 4 * 100 bytes (newline not counted) is read, one more
    # is not (windows, which are not capped by max_document_chars, show the line got through)
    exact = write(tmp_path / "exact.txt", "z" * 400 + "\n" + "w" * 400)
    got = read_documents(exact, max_document_chars=100, window_words=10)
    assert [len(d.text) for d in got] == [400, 400]
    over = write(tmp_path / "over.txt", "z" * 401 + "\n")
    with pytest.raises(UserError, match="line longer than 400 bytes"):
        list(read_documents(over, max_document_chars=100, window_words=10))


def test_streams_documents_before_reading_the_rest(tmp_path):
    path = write(tmp_path / "s.txt", "one\ntwo\n\xff\n".encode("latin-1"))
    docs = read_documents(path)
    assert next(docs).text == "one" and next(docs).text == "two"
    with pytest.raises(UserError, match=r"s\.txt:3"):
        next(docs)


def test_bad_arguments(tmp_path):
    path = write(tmp_path / "d.txt", "x\n")
    with pytest.raises(UserError, match="unknown document format 'csv'"):
        list(read_documents(path, "csv"))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="window_words must be a positive integer"):
        list(read_documents(path, window_words=0))
    with pytest.raises(UserError, match="no such file or folder"):
        list(read_documents(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no .txt or .txt.gz files"):
        list(read_documents(tmp_path / "empty"))
