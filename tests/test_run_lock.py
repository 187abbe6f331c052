"""One folder, one run: two real processes pointed at one output folder, the second refused at
once with one line naming the first; a crashed run's lock taken over with a note."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contrasent.core import runlock
from contrasent.core.errors import UserError
from contrasent.core.runlock import LOCK_FILE, RunLock

SRC = str(Path(__file__).resolve().parents[1] / "src")

HOLD = """
import sys, time
from contrasent.core.runlock import RunLock
from contrasent.core.errors import UserError
start = float(sys.argv[2])
while time.time() < start:  # both processes reach for the lock at the same moment
    time.sleep(0.001)
try:
    with RunLock(sys.argv[1], "contrasent test"):
        print("got it", flush=True)
        time.sleep(3)
except UserError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"):
        env.pop(key, None)
    return env


def test_two_processes_started_together(tmp_path):
    start = str(time.time() + 2.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run"), start], env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = next(p for p, (code, _, _) in zip(procs, results, strict=True) if code == 0)
    refused = next(err for code, _, err in results if code == 2).strip()
    assert "\n" not in refused
    assert f"in use by contrasent test (pid {winner.pid} on {socket.gethostname()}" in refused
    assert "started 20" in refused
    # the winner released it: the folder is free again
    with RunLock(tmp_path / "run", "contrasent test"):
        pass


def test_refused_in_the_instant_before_the_holder_writes_its_record(tmp_path):
    """The race the test above hit once: the winner has the flock but has not yet written who it
    is. The refused process waits for the record instead of naming nobody."""
    import fcntl
    import threading

    tmp_path.joinpath(LOCK_FILE).touch()
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: flock refuses RunLock
    record = {"pid": 4242, "host": "node7", "started": time.time(), "command": "contrasent train",
              "job": "other"}  # fmt: skip
    late = threading.Timer(0.3, os.pwrite, (fd, json.dumps(record).encode(), 0))
    late.start()
    try:
        with pytest.raises(UserError, match=r"in use by contrasent train \(pid 4242 on node7"):
            RunLock(tmp_path, "contrasent test").acquire()
    finally:
        late.join()
        os.close(fd)


def _write_holder(folder: Path, **info) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": 1, "host": socket.gethostname(), "started": time.time(),
              "command": "contrasent train", "job": "other", **info}  # fmt: skip
    path = folder / LOCK_FILE
    path.write_text(json.dumps(record))
    return path


def test_crashed_run_on_this_host_is_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout  # fmt: skip
    _write_holder(tmp_path, pid=int(dead))
    with RunLock(tmp_path, "contrasent train"):
        held = json.loads((tmp_path / LOCK_FILE).read_text())
        assert held["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text and "no longer" in caplog.text
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: empty, free


def test_other_host_heartbeat_decides(tmp_path, caplog):
    path = _write_holder(tmp_path, host="node-7", pid=123)
    with pytest.raises(UserError, match=r"in use by contrasent train \(pid 123 on node-7"):
        RunLock(tmp_path, "contrasent train").acquire()
    old = time.time() - runlock.STALE_S - 5  # the holder's heartbeat stopped: a dead node
    os.utime(path, (old, old))
    with RunLock(tmp_path, "contrasent train"):
        pass
    assert "heartbeat stopped" in caplog.text


def test_heartbeat_refreshes_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    with RunLock(tmp_path, "contrasent train") as held:
        before = held.path.stat().st_mtime
        os.utime(held.path, (before - 100, before - 100))
        time.sleep(0.3)
        assert held.path.stat().st_mtime > before - 1


def test_ranks_of_one_job_share_the_lock(tmp_path, monkeypatch):
    for key, value in {"MASTER_ADDR": "n1", "MASTER_PORT": "29500", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    with RunLock(tmp_path, "contrasent train", is_main=True):
        RunLock(tmp_path, "contrasent train", is_main=False).acquire()  # rank 1: same job
        monkeypatch.setenv("MASTER_PORT", "29501")  # another job's rank 1
        with pytest.raises(UserError, match="in use by"):
            RunLock(tmp_path, "contrasent train", is_main=False).acquire()


TRAIN = """
import sys, time
from contrasent.cli.main import main
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
t0 = time.time()
code = main(["train", sys.argv[1]])
print(f"seconds {time.time() - t0:.1f}", flush=True)
sys.exit(code)
"""


def test_train_refused_while_another_process_holds_the_folder(tmp_path, tiny_bert_dir, wiki):
    """train() from Python, while a real other process runs in the folder: refused before the
    model loads, nothing of the folder touched."""
    from contrasent.train.loop import train

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run"), "0"],
                              env=_env(), stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "got it"
        cfg = {
            "model": {"name_or_path": str(tiny_bert_dir)},
            "objective": {"name": "simcse_unsup"},
            "data": {"kind": "text", "path": str(wiki)},
            "train": {"max_steps": 2, "batch_size": 4},
            "output_dir": str(tmp_path / "run"),
        }
        with pytest.raises(UserError, match=f"in use by contrasent test \\(pid {holder.pid} "):
            train(cfg)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_FILE]
    finally:
        holder.wait(timeout=60)


@pytest.fixture
def wiki(shared_data: Path) -> Path:
    return shared_data / "corpus" / "wiki1m-head.txt"


@pytest.mark.slow  # two full CLI processes (~20 s each on a busy 2-core machine)
def test_two_trainings_in_one_folder(tmp_path, tiny_bert_dir, wiki):
    """The issue's case: two `contrasent train` into one folder started together. Before: both
    exited 0, each deleting the other's checkpoints. Now the second stops at once."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{name_or_path: {tiny_bert_dir}, max_seq_length: 16}}\n"
        "objective: {name: simcse_unsup}\n"
        f"data: {{kind: text, path: {wiki}}}\n"
        "train: {batch_size: 4, max_steps: 4}\n"
        "checkpoint: {every_steps: 2}\n"
        "eval: {at_end: false}\n"
        "logging: {progress_bar: false, tensorboard: false, log_every: 1}\n"
        f"output_dir: {tmp_path / 'run'}\n"
    )
    start = str(time.time() + 8.0)  # after both have imported the package
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", TRAIN, str(recipe), start], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    _, out, err = next(r for r in results if r[0] == 2)
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "is in use by contrasent train (pid" in lines[0], err
    # at once: the recipe checked, then refused before the model loads or the folder is touched
    assert "Loading weights" not in err
    winner = float(next(r for r in results if r[0] == 0)[1].split("seconds ")[1])
    assert float(out.split("seconds ")[1]) < winner
    records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(r)["step"] for r in records if json.loads(r)["kind"] == "train"]
    assert steps == [1, 2, 3, 4]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
