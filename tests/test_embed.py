"""embed_file: row alignment, .gz input, bad UTF-8, resume after a crash, output formats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from contrasent.core.errors import UserError
from contrasent.model.encoder import Encoder
from contrasent.serve.embed import embed_file

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


def test_crash_mid_file_keeps_old_output_and_resumes(
    encoder: Encoder, tmp_path: Path, monkeypatch
) -> None:
    src = _write(tmp_path / "in.txt", "\n".join(LINES).encode())
    (tmp_path / "out.npy").write_bytes(b"previous result")
    calls = []
    real = Encoder.encode

    def flaky(self, texts, **kw):
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return real(self, texts, **kw)

    monkeypatch.setattr(Encoder, "encode", flaky)
    with pytest.raises(RuntimeError):
        embed_file(encoder, src, tmp_path / "out.npy", chunk_lines=2)
    assert (tmp_path / "out.npy").read_bytes() == b"previous result"  # old output untouched
    manifest = json.loads((tmp_path / "out.npy.chunks" / "manifest.json").read_text())
    assert [c["rows"] for c in manifest["chunks"]] == [2, 2] and not manifest["complete"]
    calls.clear()
    summary = embed_file(encoder, src, tmp_path / "out.npy", chunk_lines=2)
    assert calls == [2, 1] and summary["resumed_rows"] == 4  # only the missing chunks
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), real(encoder, LINES), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.npy"]


def test_other_run_in_chunk_folder_is_refused(
    encoder: Encoder, tmp_path: Path, monkeypatch
) -> None:
    src = _write(tmp_path / "in.txt", "\n".join(LINES).encode())
    real = Encoder.encode

    def crash_second(self, texts, **kw):
        if crash_second.n == 1:
            raise RuntimeError("killed")
        crash_second.n += 1
        return real(self, texts, **kw)

    crash_second.n = 0
    monkeypatch.setattr(Encoder, "encode", crash_second)
    with pytest.raises(RuntimeError):
        embed_file(encoder, src, tmp_path / "out.npy", chunk_lines=3)
    monkeypatch.setattr(Encoder, "encode", real)
    with pytest.raises(UserError, match="different run.*chunk_lines"):
        embed_file(encoder, src, tmp_path / "out.npy", chunk_lines=4)


def test_truncated_inputs_are_counted(encoder: Encoder, tmp_path: Path) -> None:
    src = _write(tmp_path / "in.txt", b"short\n" + b"word " * 500 + b"\n" + b"x " * 126 + b"\n")
    summary = embed_file(encoder, src, tmp_path / "out.npy")  # max_seq_length 128
    assert summary["truncated"] == 1  # 126 tokens + [CLS] [SEP] fit exactly


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
@pytest.mark.parametrize("with_text", [False, True])
def test_parquet_and_jsonl(encoder: Encoder, tmp_path: Path, suffix: str, with_text: bool) -> None:
    src = _write(tmp_path / "in.txt", "\n".join(LINES).encode() + b"\n")
    out = tmp_path / f"out{suffix}"
    embed_file(encoder, src, out, chunk_lines=3, with_text=with_text)
    want = encoder.encode(LINES)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert table.column("id").to_pylist() == list(range(len(LINES)))
        got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        texts = table.column("text").to_pylist() if with_text else None
        assert ("text" in table.column_names) == with_text
    else:
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        got = np.array([r["embeddings"] for r in records], dtype=np.float32)  # DeCLUTR's key
        texts = [r["text"] for r in records] if with_text else None
        assert all(("text" in r) == with_text for r in records)
    np.testing.assert_allclose(got, want, atol=1e-5)
    if with_text:
        assert texts == LINES


def test_bad_output_suffix_and_shard_spec(encoder: Encoder, tmp_path: Path) -> None:
    src = _write(tmp_path / "in.txt", b"x\n")
    with pytest.raises(UserError, match=r"unknown format; use one of \.npy, \.parquet, \.jsonl"):
        embed_file(encoder, src, tmp_path / "out.csv")
    for bad in ("2/2", "1", "a/b", "0/0"):
        with pytest.raises(UserError, match="shard"):
            embed_file(encoder, src, tmp_path / "out.npy", shard=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
