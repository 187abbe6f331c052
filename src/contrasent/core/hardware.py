"""What this machine offers: the CPU's bf16 matmul support and the CPU threads this process may use
(and how its malloc treats freed memory).

Everything here is a pure function of what it is given (cpuinfo text, affinity, cgroup quota,
load average) plus thin readers of the real values, so the decisions are tested with mocked
machines. Importing this module does not import torch (``contrasent env`` and ``--help`` stay
fast); the torch-side facts are read inside :func:`torch_facts`.

bf16 capability, fastest first:

- ``amx``: Intel AMX tiles (``amx_bf16``): oneDNN runs bf16 matmuls on them, ~10x fp32.
- ``avx512_bf16``: the AVX512-BF16 dot-product instruction (Intel Cooper Lake+, AMD Zen 4+):
  oneDNN's bf16 matmuls run ~2-5x fp32 (measured on an AMD EPYC with it: ~5x, MiniLM's FFN).
- ``none``: bf16 is emulated by conversions: slower than fp32, so ``auto`` keeps fp32.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BF16_LEVELS = ("amx", "avx512_bf16", "none")
FAST_BF16 = ("amx", "avx512_bf16")  # where ``auto`` precision picks bf16 on a CPU


# ----------------------------------------------------------------------------- the CPU
def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of /proc/cpuinfo's first processor (all processors carry the same)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown CPU"


def bf16_level(flags: frozenset[str], torch_capability: str | None = None) -> str:
    """``amx``, ``avx512_bf16`` or ``none`` from the CPU flags; torch's own reading
    (``torch.backends.cpu.get_cpu_capability()``: ``AVX512_BF16``/``AMX_BF16`` in builds that
    report it) counts when the flags are unknown (no /proc/cpuinfo: macOS, Windows)."""
    cap = (torch_capability or "").upper()
    if "amx_bf16" in flags or "AMX" in cap:
        return "amx"
    if "avx512_bf16" in flags or "BF16" in cap:
        return "avx512_bf16"
    return "none"


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


# ----------------------------------------------------------------------------- threads
def cgroup_cpu_quota(cpu_max: str | None) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line (``"200000 100000"`` = 2.0; ``max``: none)."""
    if not cpu_max:
        return None
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(affinity: int, quota: float | None) -> int:
    """CPUs this process may run on: its affinity set, capped by a cgroup quota (rounded up: a
    quota of 1.5 CPUs still lets two threads make progress)."""
    n = max(1, affinity)
    return max(1, min(n, math.ceil(quota))) if quota else n


def default_threads(usable: int, load: float, passive: bool = False) -> int:
    """Threads for torch's intra-op pool given the others' load (1-minute load average).

    Torch's parallel regions wait at a barrier for their slowest thread; when more threads want
    the CPUs than there are, one of ours is often descheduled and all the others wait for it.
    With OpenMP's default (active) wait policy the waiting threads spin, taking CPU from the one
    they wait for (measured here: 5 TSDAE steps 135 s with 2 threads vs 9 s with 1, at load ~4
    on 2 cores; quickstart steps 89 s vs 17 s at load ~17). So, active: every usable CPU while
    the machine has room (load below its CPUs), else our fair share of it, ``usable * usable /
    (load + usable)`` (us as ``usable`` of ``load + usable`` runnable threads), at least 1.
    ``passive`` (OMP_WAIT_POLICY=PASSIVE in force, :func:`passive_openmp`): a waiting thread
    sleeps at once, and every usable CPU is then the faster choice at any load (quickstart
    steps at load ~17 on 2 cores: 2 passive threads 5.9-6.3 s vs 1 thread 16.9 s).
    """
    if passive or load < usable:
        return usable
    return max(1, int(usable * usable / (load + usable)))


def passive_openmp(environ: dict[str, str] | None = None, torch_loaded: bool | None = None) -> bool:
    """Ask OpenMP (torch's CPU thread pool, GNU libgomp in torch's wheels) to let a thread that
    waits at a barrier sleep at once rather than spin: ``OMP_WAIT_POLICY=PASSIVE``, unless the
    user set OMP_WAIT_POLICY. OpenMP reads it when torch is imported, so it is only set while
    torch is not loaded yet (the CLI calls this first). Returns whether PASSIVE is in force."""
    environ = os.environ if environ is None else environ
    loaded = "torch" in sys.modules if torch_loaded is None else torch_loaded
    if "OMP_WAIT_POLICY" not in environ and not loaded:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


# ----------------------------------------------------------------------------- memory
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
#: a user's own malloc settings, which win (environment variables glibc reads at start)
MALLOC_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                   "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")  # fmt: skip
_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")  # LD_PRELOADed in place of glibc's malloc
_kept_memory = False  # keep_freed_memory() is in force in this process


def keep_freed_memory(environ: dict[str, str] | None = None, mallopt=None) -> bool:
    """Let glibc's malloc keep freed memory for reuse: no fresh mapping per large block
    (``M_MMAP_MAX`` 0) and the free top of the heap kept up to 2 GiB (``M_TRIM_THRESHOLD``).

    A training step allocates and frees tensors of tens of MB ([tokens, vocab] fp32 logits,
    the [vocab, H] embedding gradient, activations); glibc serves every block above its mmap
    threshold (at most 32 MB) with a fresh mapping, zero-filled page by page on first touch,
    every step, and returns a freed heap top that the next step grows again. Measured on this
    project's CPU (MiniLM, 1 thread): a bf16 TSDAE step 1.23 -> 1.03 s, a bf16 unsup SimCSE
    step 0.52 -> 0.50 s. The cost: the process keeps its peak heap. Left alone where the user
    chose: ``CONTRASENT_MALLOC=system``, any glibc malloc variable (:data:`MALLOC_SETTINGS`),
    an LD_PRELOADed allocator (jemalloc, tcmalloc, mimalloc); and on a C library without
    ``mallopt`` (not glibc). The CLI calls it first; returns whether it is in force."""
    global _kept_memory
    environ = os.environ if environ is None else environ
    preload = environ.get("LD_PRELOAD", "").lower()
    if (
        environ.get("CONTRASENT_MALLOC", "").strip().lower() == "system"
        or any(k in environ for k in MALLOC_SETTINGS)
        or any(a in preload for a in _ALLOCATORS)
    ):
        return False
    if mallopt is None:
        if not sys.platform.startswith("linux"):  # glibc's: macOS's and Windows' differ
            return False
        import ctypes

        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # musl: a stub that refuses
        if mallopt is None:
            return False
    ok = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    _kept_memory = _kept_memory or ok
    return ok


def read_cpu_max() -> str | None:
    try:
        return Path("/sys/fs/cgroup/cpu.max").read_text()
    except OSError:
        return None


def read_affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


# ----------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class Machine:
    """What a run is told about its machine (``contrasent env``, the log's first lines)."""

    cpu: str
    bf16: str  # one of BF16_LEVELS
    usable_cpus: int
    load: float
    threads: int  # the default (or the $OMP_NUM_THREADS / --threads a user set)
    threads_from: str  # "default", "OMP_NUM_THREADS", "--threads"
    passive: bool = False  # OMP_WAIT_POLICY=PASSIVE in force (waiting threads sleep)
    kept_memory: bool = False  # keep_freed_memory() in force

    def line(self) -> str:
        wait = "passive" if self.passive else "active"
        kept = "; malloc keeps freed memory" if self.kept_memory else ""
        return (
            f"cpu: {self.cpu}; bf16 matmuls: {self.bf16}; threads {self.threads} of "
            f"{self.usable_cpus} usable (load {self.load:.1f}; {self.threads_from}; "
            f"OpenMP wait {wait}{kept})"
        )


def machine(threads: int | None = None) -> Machine:
    """This machine, and the threads a run uses: ``threads`` (``--threads``) if given, else
    ``$OMP_NUM_THREADS`` if set, else :func:`default_threads`."""
    info = read_cpuinfo()
    usable = usable_cpus(read_affinity(), cgroup_cpu_quota(read_cpu_max()))
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")  # launched processes on this machine share it
    usable = max(1, usable // int(local)) if local.isdigit() and int(local) > 1 else usable
    load = read_load()
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    passive = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"
    if threads:
        n, source = threads, "--threads"
    elif omp.isdigit() and int(omp) > 0:
        n, source = int(omp), "OMP_NUM_THREADS"
    else:
        n, source = default_threads(usable, load, passive), "default"
    level = bf16_level(cpu_flags(info), None)
    return Machine(cpu_model(info), level, usable, load, n, source, passive, _kept_memory)


def torch_facts() -> dict[str, str]:
    """torch's own view: version, ISA level of its kernels, oneDNN, CUDA (imports torch)."""
    import torch

    facts = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": str(torch.backends.mkldnn.is_available()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    return facts


def cpu_bf16_level() -> str:
    """This CPU's bf16 level (:func:`bf16_level` of /proc/cpuinfo and torch's capability)."""
    import torch

    if not torch.backends.mkldnn.is_available():  # no oneDNN: no fast bf16 kernels at all
        return "none"
    return bf16_level(cpu_flags(read_cpuinfo()), torch.backends.cpu.get_cpu_capability())


def auto_half_precision(cuda: bool) -> str | None:
    """What precision ``auto`` picks (inference and training alike): on CUDA bf16 where the GPU
    has it, else fp16; on a CPU bf16 only where it has fast bf16 matmuls (:data:`FAST_BF16`),
    else None: stay in fp32 (emulated bf16 is slower than fp32)."""
    import torch

    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_level() in FAST_BF16 else None


_APPLIED: list[Machine] = []  # what apply_threads set in this process, until it is said


def apply_threads(threads: int | None = None, say: bool = True) -> Machine:
    """Set torch's intra-op threads for this run (see :func:`machine`); ``say``: log the machine
    now, else at the first :func:`say_machine` (once the run's inputs are checked and its model
    loads, so a user's mistake stays one line)."""
    import torch

    found = machine(threads)
    if found.threads != torch.get_num_threads():
        torch.set_num_threads(found.threads)
    _APPLIED[:] = [found]
    if say:
        say_machine()
    return found


def say_machine() -> None:
    """Log the machine line of the last :func:`apply_threads`, once."""
    if _APPLIED:
        log.info("%s", _APPLIED.pop().line())


def matmul_peak(
    dtype_name: str, m: int = 2048, k: int = 384, n: int = 1536, seconds: float = 1.0
) -> float:
    """GFLOP/s of an [m, k] @ [k, n] matmul in ``fp32``/``bf16``/``fp16`` on the CPU with the
    current threads (default: MiniLM's FFN shape over a batch of 64 x 32 tokens): the peak a
    run's speed is compared with, measured in the same process under the same load."""
    import time

    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):  # warm-up: oneDNN picks and caches its kernel
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * m * k * n * runs / (time.perf_counter() - start) / 1e9
