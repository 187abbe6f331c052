"""A failure on one process of a run ends every process within seconds, with that process's
message: not a hang until the group's timeout (30 minutes), not an abort."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

RANK = """
import sys
from contrasent.train.loop import train

def fail_on_rank_1(step, record):
    if step == 2 and int(sys.argv[1]) == 1:
        raise ValueError("the data server went away")

train({
    "model": {"name_or_path": sys.argv[2], "max_seq_length": 16},
    "objective": {"name": "simcse_unsup"},
    "data": {"kind": "text", "path": sys.argv[3]},
    "train": {"max_steps": 6, "batch_size": 4},
    "eval": {"at_end": False},
    "logging": {"tensorboard": False, "progress_bar": False},
    "output_dir": sys.argv[4],
}, callbacks=[fail_on_rank_1])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_error_on_one_rank_ends_both_with_its_message(tmp_path, tiny_bert_dir, shared_data):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}  # fmt: skip
    wiki = shared_data / "corpus" / "wiki1m-head.txt"
    procs = []
    for rank in range(2):
        argv = [sys.executable, "-c", RANK, str(rank), str(tiny_bert_dir), str(wiki),
                str(tmp_path / "run")]  # fmt: skip
        procs.append(subprocess.Popen(argv, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    ended = {}
    deadline = time.monotonic() + 600
    while len(ended) < 2 and time.monotonic() < deadline:
        for rank, p in enumerate(procs):
            if rank not in ended and p.poll() is not None:
                ended[rank] = time.monotonic()
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
    errs = [p.communicate()[1] for p in procs]
    assert len(ended) == 2, errs
    assert abs(ended[0] - ended[1]) < 15, (ended, errs)  # seconds, not the 30-minute timeout
    assert procs[1].returncode != 0 and "ValueError: the data server went away" in errs[1]
    assert procs[0].returncode != 0
    line = "contrasent train: error: rank 1: ValueError: the data server went away"
    assert line in errs[0], errs[0]
    assert "terminate called" not in errs[0] + errs[1]
