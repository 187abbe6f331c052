"""A checkpoint written by the code before the layout change (commit f198476, flat modules)
resumes under the current code to bitwise-equal final weights: the move changed no format.

The old code is taken from this repository's history (``git archive``) and run in a child
process; the same recipe then resumes from its step-2 checkpoint here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contrasent.train.loop import train

REPO = Path(__file__).resolve().parents[1]
OLD = "f198476"  # the last commit with the flat layout


def _old_source(dest: Path) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the pre-layout code cannot be read from history")
    blob = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD, "src"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as archive:
        archive.extractall(dest, filter="data")
    return dest / "src"


def _recipe(tiny: Path, wiki: Path, out: Path) -> dict:
    return {
        "model": {"name_or_path": str(tiny), "pooling": "cls_before_pooler", "max_seq_length": 24},
        "objective": {"name": "simcse_unsup"},  # its MLP head is part of the checkpoint
        "data": {"kind": "text", "path": str(wiki), "shuffle_buffer": 500},
        # length_buckets: the old default, stated (the default is 4 now: other dropout draws)
        "train": {
            "batch_size": 8,
            "max_steps": 4,
            "lr": 3e-4,
            "warmup_steps": 2,
            "length_buckets": 1,
        },  # fmt: skip
        "eval": {"every_steps": 0, "at_end": False},
        "checkpoint": {"every_steps": 2, "keep_last": 3},
        "logging": {"log_every": 1, "tensorboard": False, "progress_bar": False},
        "output_dir": str(out),
    }


def test_checkpoint_of_the_old_layout_resumes_bitwise(
    tiny_bert_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    old_src = _old_source(tmp_path / "old")
    out = tmp_path / "run"
    recipe = _recipe(tiny_bert_dir, shared_data / "corpus" / "wiki1m-head.txt", out)
    script = (
        "import json, sys, contrasent\n"
        "from contrasent.train.loop import train\n"
        "assert contrasent.__file__.startswith(sys.argv[2]), contrasent.__file__\n"
        "train(json.loads(sys.argv[1]))\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, json.dumps(recipe), str(old_src)],
        check=True,
        env={
            "PYTHONPATH": str(old_src),
            "PATH": "/usr/bin:/bin",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        },  # fmt: skip
    )
    step4 = out / "checkpoints" / "step-00000004"
    old_state = torch.load(step4 / "trainable.pt")
    old_final = load_file(out / "final" / "model.safetensors")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child ran: float sums depend on the thread count
    try:
        train({**recipe, "resume_from": str(out / "checkpoints" / "step-00000002")})
    finally:
        torch.set_num_threads(threads)

    new_state = torch.load(step4 / "trainable.pt")
    new_final = load_file(out / "final" / "model.safetensors")
    assert old_state.keys() == new_state.keys() and old_final.keys() == new_final.keys()
    assert all(torch.equal(old_state[k], new_state[k]) for k in old_state)
    assert all(torch.equal(old_final[k], new_final[k]) for k in old_final)
