"""The real GPU checks on a real GPU (the H100 machine): NVML through `NvmlReader`, no fakes.

Shows `cuda_arch` with TORCH_CUDA_ARCH_LIST="9.0 10.0" (expect PASS on an H100, compute capability 9.0) and
"8.0" (expect FAIL, fix naming 9.0), the other node checks, a process holding GPU memory being named by
`gpu_memory`, and timings. Needs only torch, nvidia-ml-py, psutil and this repo (run with PYTHONPATH=.);
if click/rich/structlog are importable it also times the full `ops preflight --json` CLI.
Exit 0 when the expectations hold, 1 otherwise. I/O: NVML, processes, a CUDA allocation.

    PYTHONPATH=. python bench/gpu_preflight.py
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from healthchecks import gpu, host, processes  # noqa: E402  (only psutil / nvidia-ml-py / torch needed)
from healthchecks.base import CheckContext, Status  # noqa: E402
from healthchecks.gpu_seam import GpuUnavailable  # noqa: E402
from healthchecks.nvml_reader import NvmlReader  # noqa: E402

HOLDER = "import torch, time; x = torch.empty(1024**3, dtype=torch.uint8, device='cuda'); " \
         "print('holding', flush=True); time.sleep(120)"


def show(r) -> None:
    print(f"  {r.name:<16} {r.status.value:<8} {r.detail}")
    if r.fix:
        print(f"  {'':<16} {'fix:':<8} {r.fix}")


def ctx_with(**env) -> CheckContext:
    return CheckContext(env={**os.environ, **env}, gpu=gpu.OnceReader(NvmlReader()), require_gpu=True)


def arch_demo() -> bool:
    ok = True
    for value, want in (("9.0 10.0", Status.PASS), ("8.0", Status.FAIL)):
        t0 = time.perf_counter()
        r = gpu.check_cuda_arch(ctx_with(TORCH_CUDA_ARCH_LIST=value))
        dt = time.perf_counter() - t0
        print(f'TORCH_CUDA_ARCH_LIST="{value}" ({dt * 1000:.0f} ms incl. torch import on first call): '
              f'expect {want.value}, got {r.status.value}')
        show(r)
        ok &= r.status == want
    return ok


def all_checks() -> None:
    print("all node checks (real NVML, TORCH_CUDA_ARCH_LIST=\"9.0 10.0\"):")
    ctx = ctx_with(TORCH_CUDA_ARCH_LIST="9.0 10.0")
    t0 = time.perf_counter()
    for fn in (gpu.check_gpu, gpu.check_cuda_arch, gpu.check_gpu_memory, gpu.check_gpu_health,
               processes.check_stale_processes, processes.check_ray_cluster, host.check_host, host.check_wandb):
        show(fn(ctx))
    print(f"  (8 checks in {(time.perf_counter() - t0) * 1000:.0f} ms, torch already imported)")


def holder_demo() -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()
        r = gpu.check_gpu_memory(ctx_with())
        print(f"a process holding 1 GiB (pid {holder.pid}, started: {line.strip() or 'no'}):")
        show(r)
        named = str(holder.pid) in r.detail
        print(f"  holder named with pid: {named} (False is expected only inside a container's pid namespace)")
    finally:
        holder.kill()
        holder.wait()


def cli_timing(extra: list[str], runs: int = 5) -> None:
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": "9.0 10.0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "ops.cli", "preflight", "--json", *extra], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
    print(f"ops preflight --json {' '.join(extra)} (cold subprocess) x{runs}: median {statistics.median(times):.3f} s,"
          f" min {min(times):.3f} s, exit {p.returncode}; goal <= 2 s: "
          f"{'MET' if statistics.median(times) <= 2.0 else 'MISSED'}")
    try:   # a timing only counts when the run really produced the report
        summary = json.loads(p.stdout)["summary"]
        print(f"  last run's summary: {summary}")
    except (ValueError, KeyError, TypeError):
        print("  INVALID: the run produced no JSON report:\n" + p.stderr[-2000:])


def main() -> int:
    missing = [m for m in ("click", "rich", "structlog", "tenacity", "yaml", "hydra", "omegaconf")
               if importlib.util.find_spec(m) is None]
    print(f"python {sys.version.split()[0]}; missing optional wheels for the full CLI: {missing or 'none'}")
    t0 = time.perf_counter()
    try:
        snap = NvmlReader().snapshot()
    except GpuUnavailable as err:
        print(f"no GPU here: {err}")
        return 2
    print(f"NVML snapshot {(time.perf_counter() - t0) * 1000:.0f} ms: driver {snap.driver_version}, "
          f"CUDA {snap.cuda_driver_version}")
    for g in snap.gpus:
        print("  " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(g).items()))
    ok = arch_demo()
    all_checks()
    holder_demo()
    if missing:
        print(f"full CLI not timed: install {' '.join(missing)} to run `ops preflight` here")
    else:
        cli_timing([])
        cli_timing(["--skip", "cuda_arch"])   # without importing torch
    print("EXPECTATIONS MET" if ok else "EXPECTATIONS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
