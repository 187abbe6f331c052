"""`contrasent env`: what this machine offers a run (CPU, bf16 matmuls, threads, torch, CUDA)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EnvArgs:
    """Show the CPU, its bf16 matmul support (AMX, AVX512-BF16 or none: what ``--precision auto``
    and ``train.mixed_precision: auto`` follow), the threads a run would use now and torch's view.

    Args:
        threads: Show the machine as a run with ``--threads N`` would use it.
        measure: Also measure the fp32 and bf16 matmul peak here (GFLOP/s, ~1 s each).
    """

    threads: int | None = None
    measure: bool = False

    def validate(self) -> None:
        from contrasent.core.errors import UserError

        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")


def run_env(args: EnvArgs) -> None:
    from contrasent.core.hardware import apply_threads, cpu_bf16_level, matmul_peak, torch_facts
    from contrasent.core.version import __version__

    found = apply_threads(args.threads, say=False)  # sets the threads the measurement runs with
    level = cpu_bf16_level()
    facts = torch_facts()
    print(f"contrasent {__version__}")
    print(f"cpu: {found.cpu}")
    print(f"bf16 matmuls: {level} (precision auto on CPU: {'bf16' if level != 'none' else 'fp32'})")
    print(f"threads: {found.threads} of {found.usable_cpus} usable ({found.threads_from}; "
          f"1-minute load {found.load:.1f}; OpenMP wait "
          f"{'passive' if found.passive else 'active'})")  # fmt: skip
    kept = "keeps freed memory" if found.kept_memory else "glibc's default (or yours)"
    print(f"malloc: {kept}")
    print(" ".join(f"{k}: {v};" for k, v in facts.items()).rstrip(";"))
    if args.measure:
        peaks = {p: matmul_peak(p) for p in ("fp32", "bf16")}
        print("matmul 2048x384 @ 384x1536: " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items())
              + f" (bf16/fp32 {peaks['bf16'] / peaks['fp32']:.1f}x)")  # fmt: skip
