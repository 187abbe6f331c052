"""bf16 inference: capability detection (mocked machines), the ``auto`` choice, the held bf16 copy,
and bf16 MiniLM against fp32 on STS (one task by default, all seven under ``-m slow``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contrasent.core import hardware
from contrasent.core.errors import UserError
from contrasent.model import loading
from contrasent.model.encoder import Encoder

XEON_AMX = "model name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC_ZEN4 = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD_XEON = "model name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"


@pytest.mark.parametrize(
    "cpuinfo, level",
    [(XEON_AMX, "amx"), (EPYC_ZEN4, "avx512_bf16"), (OLD_XEON, "none"), ("", "none")],
)
def test_bf16_level_from_cpu_flags(cpuinfo, level):
    assert hardware.bf16_level(hardware.cpu_flags(cpuinfo), "AVX512") == level


def test_bf16_level_from_torch_when_flags_are_unknown():
    assert hardware.bf16_level(frozenset(), "AMX_BF16") == "amx"
    assert hardware.bf16_level(frozenset(), "DEFAULT") == "none"


@pytest.mark.parametrize(
    "level, expected", [("amx", "bf16"), ("avx512_bf16", "bf16"), ("none", "fp32")]
)
def test_auto_precision_on_cpu_follows_the_capability(monkeypatch, level, expected):
    monkeypatch.setattr(hardware, "cpu_bf16_level", lambda: level)
    assert loading.resolve_precision(torch.device("cpu"), "auto") == expected
    assert loading.resolve_precision(torch.device("cpu"), "bf16") == "bf16"  # asked: honoured
    assert loading.resolve_precision(torch.device("cpu"), "fp32") == "fp32"


def test_fp16_and_unknown_precisions_are_refused_on_cpu():
    with pytest.raises(UserError, match="'fp16' needs a CUDA device"):
        loading.resolve_precision(torch.device("cpu"), "fp16")
    with pytest.raises(UserError, match="unknown precision 'int4'"):
        loading.resolve_precision(torch.device("cpu"), "int4")


def test_the_cpu_level_reads_proc_cpuinfo(monkeypatch):
    monkeypatch.setattr(hardware, "read_cpuinfo", lambda: XEON_AMX)
    assert hardware.cpu_bf16_level() == ("amx" if torch.backends.mkldnn.is_available() else "none")


@pytest.mark.parametrize(
    "cpu_max, quota", [("max 100000\n", None), ("150000 100000\n", 1.5), ("", None), ("x y", None)]
)
def test_cgroup_quota(cpu_max, quota):
    assert hardware.cgroup_cpu_quota(cpu_max) == quota


def test_usable_cpus_and_default_threads():
    assert hardware.usable_cpus(8, None) == 8
    assert hardware.usable_cpus(8, 1.5) == 2  # a quota of 1.5 CPUs: two threads progress
    assert hardware.usable_cpus(2, 4.0) == 2
    assert hardware.default_threads(2, 0.3) == 2  # room on the machine: every CPU
    assert hardware.default_threads(2, 1.9) == 2
    assert hardware.default_threads(2, 4.0) == 1  # two other jobs' worth: one thread
    assert hardware.default_threads(16, 16.0) == 8  # fair share of a loaded 16-core machine
    assert hardware.default_threads(16, 100.0) == 2
    # waiting threads that sleep (OMP_WAIT_POLICY=PASSIVE) do not slow the others: all of them
    assert hardware.default_threads(2, 17.0, passive=True) == 2
    assert hardware.default_threads(16, 100.0, passive=True) == 16


def test_passive_openmp_only_where_the_user_said_nothing_and_torch_is_not_loaded():
    env: dict[str, str] = {}
    assert hardware.passive_openmp(env, torch_loaded=False) and env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "active"}  # the user's choice wins
    assert not hardware.passive_openmp(env, torch_loaded=False)
    assert env["OMP_WAIT_POLICY"] == "active"
    env = {}  # too late: OpenMP read its settings when torch was imported
    assert not hardware.passive_openmp(env, torch_loaded=True) and env == {}
    assert hardware.passive_openmp({"OMP_WAIT_POLICY": " passive"}, torch_loaded=True)


def test_threads_given_win_over_the_environment_and_the_default(monkeypatch):
    monkeypatch.setattr(hardware, "read_affinity", lambda: 2)
    monkeypatch.setattr(hardware, "read_cpu_max", lambda: None)
    monkeypatch.setattr(hardware, "read_load", lambda: 4.2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(hardware, "_kept_memory", False)  # a CLI test in this process may set it
    assert (hardware.machine().threads, hardware.machine().threads_from) == (1, "default")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # waiting threads sleep: all CPUs
    assert (hardware.machine().threads, hardware.machine().threads_from) == (2, "default")
    assert hardware.machine().line().endswith("(load 4.2; default; OpenMP wait passive)")
    monkeypatch.setattr(hardware, "_kept_memory", True)
    assert hardware.machine().line().endswith("OpenMP wait passive; malloc keeps freed memory)")
    monkeypatch.setattr(hardware, "_kept_memory", False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert hardware.machine().threads == 2
    assert (hardware.machine(3).threads, hardware.machine(3).threads_from) == (3, "--threads")
    assert "threads 3 of 2 usable (load 4.2; --threads; OpenMP wait active)" in (
        hardware.machine(3).line()
    )
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(hardware, "read_load", lambda: 0.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two launched processes share the 2 CPUs
    assert (hardware.machine().usable_cpus, hardware.machine().threads) == (1, 1)


def test_bf16_encode_holds_a_copy_and_keeps_the_weights_fp32(tiny_bert_dir):
    enc = Encoder.from_pretrained(tiny_bert_dir, device="cpu")
    texts = ["a cat sat on the mat", "stocks fell sharply", "it rained all day long"]
    fp32 = enc.encode(texts)
    bf16 = enc.encode(texts, precision="bf16")
    assert bf16.dtype == np.float32
    assert all(p.dtype == torch.float32 for p in enc.parameters())  # the encoder's own: fp32
    held = enc._held_model(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in held.parameters())
    assert enc._held_model(torch.bfloat16) is held  # kept while the weights do not change
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() > 0.99
    with torch.no_grad():  # a training step changes a weight in place: a new copy
        next(enc.model.parameters()).add_(0.5)
    assert enc._held_model(torch.bfloat16) is not held
    assert not np.allclose(enc.encode(texts, precision="bf16"), bf16, atol=1e-3)


def _sts_in_both(minilm_dir: Path, shared_data: Path, tasks: str) -> tuple[dict, dict, float]:
    from contrasent.eval.sts import evaluate_sts

    enc = Encoder.from_pretrained(minilm_dir, device="cpu")
    seen: dict[str, list[np.ndarray]] = {"fp32": [], "bf16": []}

    def encoder(precision: str):
        def encode(texts):
            emb = enc.encode(texts, batch_size=64, precision=precision)
            seen[precision].append(emb)
            return emb

        return encode

    data = shared_data / "senteval"
    ours = {p: evaluate_sts(encoder(p), data, "test", tasks) for p in ("fp32", "bf16")}
    a, b = np.concatenate(seen["fp32"]), np.concatenate(seen["bf16"])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return ours["fp32"], ours["bf16"], float(cos.min())


def _check_parity(fp32: dict, bf16: dict, min_cos: float, count: int) -> None:
    assert min_cos >= 0.999, min_cos
    assert len(fp32["tasks"]) == count
    for task, scores in fp32["tasks"].items():
        column = "all" if "all" in scores["spearman"] else "test"  # STS12-16: all; others: test
        a, b = scores["spearman"][column], bf16["tasks"][task]["spearman"][column]
        assert abs(a - b) <= 0.1, (task, a, b)


def test_bf16_minilm_matches_fp32_on_stsb(minilm_dir, shared_data):
    fp32, bf16, min_cos = _sts_in_both(minilm_dir, shared_data, "stsb")
    _check_parity(fp32, bf16, min_cos, 1)


@pytest.mark.slow
def test_bf16_minilm_matches_fp32_on_every_sts_task(minilm_dir, shared_data):
    tasks = ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]
    fp32, bf16, min_cos = _sts_in_both(minilm_dir, shared_data, ",".join(tasks))
    _check_parity(fp32, bf16, min_cos, 7)


@pytest.mark.parametrize(
    "level, expected", [("amx", "bf16"), ("avx512_bf16", "bf16"), ("none", "no")]
)
def test_auto_mixed_precision_for_training_on_cpu(monkeypatch, level, expected):
    from contrasent.train.runtime import training_precision

    monkeypatch.setattr(hardware, "cpu_bf16_level", lambda: level)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_precision("auto") == expected
    assert training_precision("no") == "no" and training_precision("bf16") == "bf16"


def test_version_and_env_name_the_bf16_level(capsys, monkeypatch):
    from contrasent.cli.main import main

    monkeypatch.setattr(hardware, "read_cpuinfo", lambda: EPYC_ZEN4)
    assert main(["--version"]) == 0
    assert "cpu: AMD EPYC; bf16 matmuls: avx512_bf16; threads" in capsys.readouterr().out
    threads = torch.get_num_threads()
    try:
        assert main(["env", "--threads", "1"]) == 0
        out = capsys.readouterr().out
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    level = "avx512_bf16" if torch.backends.mkldnn.is_available() else "none"
    assert f"bf16 matmuls: {level}" in out and "threads: 1 of" in out and "(--threads;" in out
    assert ("malloc: keeps freed memory" in out) == hardware._kept_memory
    assert main(["env", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "contrasent env: error: --threads must be >= 1, got 0"


def test_keep_freed_memory_only_where_the_user_chose_nothing():
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    assert hardware.keep_freed_memory({}, mallopt)
    assert calls == [(hardware.M_MMAP_MAX, 0), (hardware.M_TRIM_THRESHOLD, 2**31 - 1)]
    for env in (
        {"CONTRASENT_MALLOC": "system"},
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=1"},
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
    ):
        calls.clear()
        assert not hardware.keep_freed_memory(env, mallopt) and calls == [], env
    assert not hardware.keep_freed_memory({}, lambda _p, _v: 0)  # refused by the C library


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc and getrusage page faults")
def test_kept_memory_is_reused_without_fresh_page_faults():
    """A step-like loop of 64 MB tensors: with glibc's defaults every step maps them afresh,
    faulted in page by page on first touch (~49k faults a step); kept, the steps settle on
    reusing the freed pages (most steps after the first few fault none)."""
    script = (
        "import resource, torch\n"
        "from contrasent.core.hardware import keep_freed_memory\n"
        "keep_freed_memory()\n"
        "faults = []\n"
        "for step in range(15):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    x = torch.ones(16 * 2**20)\n"
        "    y = x * 2\n"
        "    (x + y).sum()\n"
        "    del x, y\n"
        "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(*faults[-5:])\n"
    )
    faults = {}
    for setting in ("kept", "system"):
        env = {k: v for k, v in os.environ.items() if k not in hardware.MALLOC_SETTINGS}
        env["CONTRASENT_MALLOC"] = setting
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True)  # fmt: skip
        faults[setting] = sorted(int(n) for n in out.stdout.split()[-5:])
    assert faults["system"][0] > 30_000 and faults["kept"][2] < 1_000, faults
