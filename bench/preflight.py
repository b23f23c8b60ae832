"""Benchmark: wall time of a full `ops preflight --json` (a cold subprocess each time: interpreter start,
imports, all checks, rendering) and of the in-process check run (`healthchecks.runner.run_preflight`).
Goal: median <= 2 s on a node. Prints numbers and the machine state; asserts nothing. I/O: runs processes.

    .venv/bin/python bench/preflight.py [--runs N] [-- extra ops preflight args]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine_state() -> str:
    import psutil

    from ops import procs, ray_local
    table = procs.snapshot(with_markers=False)
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores, load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
            f"{psutil.virtual_memory().available / 2**30:.1f} GiB RAM available, {len(table)} processes, "
            f"{len(ray_local.sessions(table))} local Ray sessions")


def ops_command() -> list[str]:
    script = Path(sys.executable).with_name("ops")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ops.cli"]


def time_cli(runs: int, extra: list[str]) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*ops_command(), "preflight", "--json", *extra], cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
    return times


def time_in_process(runs: int) -> tuple[float, list[float], dict]:
    t0 = time.perf_counter()
    from healthchecks import runner
    from ops.cmd_preflight import build_context
    imports = time.perf_counter() - t0
    times, per_check = [], {}
    for _ in range(runs):
        ctx = build_context(None, False, "results", None, (), "embedded", None, None)
        t0 = time.perf_counter()
        results = runner.run_preflight(ctx)
        times.append(time.perf_counter() - t0)
    from healthchecks.base import run_check
    ctx = build_context(None, False, "results", None, (), "embedded", None, None)
    for r in results:
        if r.name not in per_check:
            t0 = time.perf_counter()
            run_check(r.name, ctx)
            per_check[r.name] = time.perf_counter() - t0
    return imports, times, per_check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("extra", nargs="*", help="extra args for ops preflight (after --)")
    args = ap.parse_args()
    print(f"machine: {machine_state()}")
    print(f"ops: {' '.join(ops_command())} (python {sys.version.split()[0]})")
    cli = time_cli(args.runs, args.extra)
    print(f"ops preflight --json (cold subprocess) x{args.runs}: median {statistics.median(cli):.3f} s, "
          f"min {min(cli):.3f} s, max {max(cli):.3f} s   goal <= 2 s: "
          f"{'MET' if statistics.median(cli) <= 2.0 else 'MISSED'}")
    imports, inproc, per_check = time_in_process(args.runs)
    print(f"in-process run_preflight x{args.runs}: median {statistics.median(inproc) * 1000:.1f} ms "
          f"(first {inproc[0] * 1000:.1f} ms; importing the CLI and checks took {imports * 1000:.0f} ms)")
    print("per check (one warm run): " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in per_check.items()))
    if shutil.which("nvidia-smi") is None:
        print("note: no nvidia-smi here; GPU checks end at 'NVML library not found' (fast path)")


if __name__ == "__main__":
    main()
