"""Bulk embedding at scale: SIGKILL + resume, shards by byte range, merge, 2 gloo processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from contrasent.core.errors import UserError
from contrasent.model.encoder import Encoder
from contrasent.serve.embed import (
    embed_file,
    line_start_at_or_after,
    merge_shards,
    read_all_lines,
    shard_range,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir: Path) -> Encoder:
    return Encoder.from_pretrained(tiny_bert_dir, device="cpu")


def corpus(path: Path, n: int, seed: int = 0) -> list[str]:
    """n lines of varied length, with empty lines and non-ASCII text, no final newline."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "Zürich", "naïve", "日本", "🙂", "delta", "x"]
    lines = [
        "" if i % 17 == 5 else " ".join(rng.choice(words, rng.integers(1, 30))) for i in range(n)
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return lines


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "contrasent.cli", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def test_shard_ranges_tile_the_file(tmp_path: Path) -> None:
    lines = corpus(tmp_path / "in.txt", 101)
    path = tmp_path / "in.txt"
    size = path.stat().st_size
    starts = {0}  # every byte offset where a line begins
    pos = 0
    for line in lines[:-1]:
        pos += len(line.encode()) + 1
        starts.add(pos)
    for offset in range(0, size + 1, 7):
        assert line_start_at_or_after(path, offset) == min(
            [s for s in starts if s >= offset] + [size]
        )
    for n in (1, 2, 3, 7, 150):  # more shards than lines: some are empty
        ranges = [shard_range(path, (i, n)) for i in range(n)]
        assert ranges[0][0] == 0 and ranges[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    with pytest.raises(UserError, match="uncompressed"):
        shard_range(tmp_path / "x.txt.gz", (0, 2))


def test_two_shards_merged_equal_one_process(encoder: Encoder, tmp_path: Path) -> None:
    lines = corpus(tmp_path / "in.txt", 250)
    whole = embed_file(encoder, tmp_path / "in.txt", tmp_path / "one.npy", chunk_lines=40)
    out = tmp_path / "sharded.npy"
    s1 = embed_file(encoder, tmp_path / "in.txt", out, chunk_lines=40, shard="1/2")
    with pytest.raises(UserError, match=r"shard\(s\) 0/2 missing"):
        merge_shards(out)
    s0 = embed_file(encoder, tmp_path / "in.txt", out, chunk_lines=40, shard="0/2")
    assert 0 < s0["rows"] < len(lines) and s0["rows"] + s1["rows"] == len(lines)
    merged = merge_shards(out)
    assert merged["rows"] == whole["rows"] == len(lines)
    assert merged["empty_lines"] == whole["empty_lines"] == sum(not t for t in lines)
    np.testing.assert_allclose(np.load(out), np.load(tmp_path / "one.npy"), atol=1e-6)
    np.testing.assert_allclose(np.load(out), encoder.encode(lines), atol=1e-5)  # in order
    assert not list(tmp_path.glob("sharded.npy.shard-*"))  # chunk folders removed after merge


def test_merge_refuses_partial_shard(encoder: Encoder, tmp_path: Path, monkeypatch) -> None:
    corpus(tmp_path / "in.txt", 120)
    out = tmp_path / "out.parquet"
    embed_file(encoder, tmp_path / "in.txt", out, chunk_lines=20, shard="0/2")
    real = Encoder.encode

    def die_after_one(self, texts, **kw):
        if die_after_one.calls:
            raise RuntimeError("killed")
        die_after_one.calls += 1
        return real(self, texts, **kw)

    die_after_one.calls = 0
    monkeypatch.setattr(Encoder, "encode", die_after_one)
    with pytest.raises(RuntimeError):
        embed_file(encoder, tmp_path / "in.txt", out, chunk_lines=20, shard="1/2")
    monkeypatch.setattr(Encoder, "encode", real)
    with pytest.raises(UserError, match=r"shard 1/2 is partial \(20 of \d+ rows\)"):
        merge_shards(out)
    assert not out.exists()


def test_sigkill_then_same_command_resumes(encoder: Encoder, tmp_path: Path) -> None:
    """A real SIGKILL mid-run; re-running the command gives every row exactly once."""
    lines = corpus(tmp_path / "in.txt", 3000)
    out = tmp_path / "out.npy"
    cmd = cli(
        "embed", "--model", str(encoder.model.name_or_path), "--device", "cpu",
        "--input", str(tmp_path / "in.txt"), "--output", str(out), "--chunk_lines", "150",
        "--batch_size", "16",
    )  # fmt: skip
    manifest = tmp_path / "out.npy.chunks" / "manifest.json"
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file():
            done = len(json.loads(manifest.read_text())["chunks"])
            if done >= 3:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = len(json.loads(manifest.read_text())["chunks"])
    assert 3 <= killed_at < 20 and not out.exists()
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed_rows={killed_at * 150}" in res.stdout
    got = np.load(out)
    assert got.shape == (len(lines), encoder.hidden_size)
    want = np.concatenate([encoder.encode(lines[i : i + 150]) for i in range(0, len(lines), 150)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not (tmp_path / "out.npy.chunks").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_gloo_processes(encoder: Encoder, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 ... embed`: one shard per process, rank 0 merges."""
    lines = corpus(tmp_path / "in.txt", 400, seed=1)
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "contrasent.cli", "embed", "--model", str(encoder.model.name_or_path),
        "--device", "cpu", "--input", str(tmp_path / "in.txt"), "--output", str(out),
        "--chunk_lines", "64", "--with_text", "true",
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "shards=2" in res.stdout
    records = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == lines == read_all_lines(tmp_path / "in.txt")
    single = embed_file(encoder, tmp_path / "in.txt", tmp_path / "one.npy", chunk_lines=64)
    assert single["rows"] == len(records)
    got = np.array([r["embeddings"] for r in records], dtype=np.float32)
    np.testing.assert_allclose(got, np.load(tmp_path / "one.npy"), atol=1e-5)


def test_empty_input_says_so(tiny_bert_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_bytes(b"")
    res = subprocess.run(
        cli("embed", "--model", str(tiny_bert_dir), "--input", str(tmp_path / "in.txt"),
            "--output", str(tmp_path / "out.npy")),
        env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "is empty" in res.stderr and "rows=0" in res.stdout
    assert np.load(tmp_path / "out.npy").shape == (0, 32)
