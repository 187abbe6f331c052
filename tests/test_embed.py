"""embed_file: row alignment, .gz input, bad UTF-8 handling, no partial output."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from contrasent.embed import embed_file
from contrasent.encoder import Encoder
from contrasent.errors import UserError

LINES = ["first line", "", "third, after an empty line", "   ", "Ünïcödé ✓", "", "last line"]


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir: Path) -> Encoder:
    return Encoder.from_pretrained(tiny_bert_dir, device="cpu")


def _write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["in.txt", "in.txt.gz"])
def test_rows_align_with_lines(encoder: Encoder, tmp_path: Path, name: str) -> None:
    src = _write(tmp_path / name, "\n".join(LINES).encode() + b"\n")  # final newline: no extra row
    summary = embed_file(encoder, src, tmp_path / "out.npy", batch_size=2, chunk_lines=3)
    got = np.load(tmp_path / "out.npy")
    assert got.dtype == np.float32 and got.shape == (len(LINES), 32)
    np.testing.assert_allclose(got, encoder.encode(LINES), atol=1e-5)
    assert summary["rows"] == len(LINES) and summary["empty_lines"] == 3
    assert summary["replaced_lines"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.npy"])


def test_crlf_bom_and_missing_final_newline(encoder: Encoder, tmp_path: Path) -> None:
    src = _write(tmp_path / "in.txt", b"\xef\xbb\xbfalpha\r\n\r\nbeta")
    embed_file(encoder, src, tmp_path / "out.npy")
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), encoder.encode(["alpha", "", "beta"]), atol=1e-5
    )


def test_empty_file_gives_zero_rows(encoder: Encoder, tmp_path: Path) -> None:
    src = _write(tmp_path / "in.txt", b"")
    assert embed_file(encoder, src, tmp_path / "out.npy")["rows"] == 0
    assert np.load(tmp_path / "out.npy").shape == (0, 32)


def test_bad_utf8_strict_names_line(encoder: Encoder, tmp_path: Path) -> None:
    src = _write(tmp_path / "in.txt", b"ok\nfine\nbad \xff\xfe byte\nok again\n")
    with pytest.raises(UserError, match=r"in\.txt:3: invalid UTF-8"):
        embed_file(encoder, src, tmp_path / "out.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_bad_utf8_replace_counts(encoder: Encoder, tmp_path: Path) -> None:
    src = _write(tmp_path / "in.txt.gz", b"ok\nbad \xff byte\n\xc3\n")
    summary = embed_file(encoder, src, tmp_path / "out.npy", errors="replace")
    assert summary["rows"] == 3 and summary["replaced_lines"] == 2
    want = encoder.encode(["ok", "bad \ufffd byte", "\ufffd"])
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, atol=1e-5)


def test_missing_input_and_bad_mode(encoder: Encoder, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        embed_file(encoder, tmp_path / "nope.txt", tmp_path / "out.npy")
    src = _write(tmp_path / "in.txt", b"x\n")
    with pytest.raises(UserError, match="errors mode"):
        embed_file(encoder, src, tmp_path / "out.npy", errors="ignore")


def test_corrupt_gzip_is_user_error(encoder: Encoder, tmp_path: Path) -> None:
    data = gzip.compress(b"line\n" * 1000)
    (tmp_path / "in.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read"):
        embed_file(encoder, tmp_path / "in.txt.gz", tmp_path / "out.npy")
    assert not (tmp_path / "out.npy").exists()


def test_crash_mid_file_leaves_no_partial_output(
    encoder: Encoder, tmp_path: Path, monkeypatch
) -> None:
    src = _write(tmp_path / "in.txt", "\n".join(LINES).encode())
    (tmp_path / "out.npy").write_bytes(b"previous result")
    calls = []
    real = Encoder.encode

    def flaky(self, texts, **kw):
        calls.append(len(texts))
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(self, texts, **kw)

    monkeypatch.setattr(Encoder, "encode", flaky)
    with pytest.raises(RuntimeError):
        embed_file(encoder, src, tmp_path / "out.npy", chunk_lines=2)
    assert (tmp_path / "out.npy").read_bytes() == b"previous result"  # old output untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.npy"]
