"""Tensor-parallel ranks: spawning, process groups, per-rank memory limits, gathers. Does process I/O.

One command starts everything: with `tensor_parallel_size=N` (or a CPU device memory limit) the launching
process spawns N rank processes (torch.multiprocessing, spawn) and waits for them. CUDA: one rank per
GPU over NCCL. CPU: gloo ranks, each standing for one device; with `++cluster.cpu_device_memory_mib=M`
each rank runs in its own child memory cgroup (v1: memory.limit_in_bytes + memsw; v2: memory.max)
limited to M MiB, so a plan too large for a "device" is really OOM-killed by the kernel.
When one rank fails the launcher kills the others (they would block in a collective), removes the
cgroups and exits with the failed rank's code (128+signal for a signal; 137 for an OOM kill).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

CGROUP_ROOT = Path("/sys/fs/cgroup")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_memory_cgroup() -> tuple[Path, str] | None:
    """(directory of this process's memory cgroup, "v1" | "v2"), or None when there is none."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_ROOT / "memory" / path.lstrip("/"), "v1"
        if hid == "0" and controllers == "":
            return CGROUP_ROOT / path.lstrip("/"), "v2"
    return None


def make_rank_cgroup(rank: int, limit_mib: int) -> Path:
    """A child memory cgroup limited to `limit_mib` (no swap); raises OSError when not permitted."""
    found = own_memory_cgroup()
    if found is None:
        raise OSError("no memory cgroup controller found in /proc/self/cgroup")
    parent, version = found
    path = parent / f"grpo-ops-{os.getpid()}-rank{rank}"
    path.mkdir(exist_ok=True)
    limit = str(int(limit_mib) * 1024 * 1024)
    if version == "v1":
        (path / "memory.limit_in_bytes").write_text(limit)
        if (path / "memory.memsw.limit_in_bytes").exists():
            (path / "memory.memsw.limit_in_bytes").write_text(limit)
    else:
        (path / "memory.max").write_text(limit)
        if (path / "memory.swap.max").exists():
            (path / "memory.swap.max").write_text("0")
    return path


def oom_kills(cgroup: Path) -> int:
    for name, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
        f = cgroup / name
        if f.exists():
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
    return 0


def remove_cgroup(cgroup: Path) -> None:
    for _ in range(50):
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def _watch_parent(parent_pid: int) -> None:
    """A rank exits when its launcher is gone (it would otherwise block forever in a collective)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(1.0)


def _rank_entry(rank: int, world: int, port: int, backend: str, parent_pid: int, cgroup: str | None,
                fn: Callable, args: tuple) -> None:
    if cgroup:
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    fn(rank, world, backend, *args)
    # Done (files closed, group destroyed): leave without the interpreter's and C++'s exit-time teardown, where a
    # c10d/gloo thread still joinable now and then aborted a finished rank ("terminate called without an
    # active exception", SIGABRT: a finished run reported as failed). An exception above still exits 1.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def init_group(rank: int, world: int, backend: str) -> None:
    if world > 1 and not dist.is_initialized():
        import datetime as dt
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=dt.timedelta(hours=2))


def run_ranks(fn: Callable, world: int, backend: str, args: tuple, cpu_limit_mib: int | None) -> int:
    """Run `fn(rank, world, backend, *args)` in `world` spawned processes; return the exit code."""
    ctx = torch.multiprocessing.get_context("spawn")
    port = free_port()
    cgroups: list[Path | None] = []
    for rank in range(world):
        cgroups.append(make_rank_cgroup(rank, cpu_limit_mib) if cpu_limit_mib else None)
    procs = [ctx.Process(target=_rank_entry, args=(r, world, port, backend, os.getpid(),
                                                    str(cgroups[r]) if cgroups[r] else None, fn, args))
             for r in range(world)]
    for p in procs:
        p.start()

    def _forward(signum, _frame):
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signum)
    old = {s: signal.signal(s, _forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _wait(procs, cgroups, cpu_limit_mib)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for cg in cgroups:
            if cg is not None:
                remove_cgroup(cg)


def _wait(procs, cgroups, limit_mib) -> int:
    while True:
        failed = [(r, p) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
        if failed or all(p.exitcode == 0 for p in procs):
            break
        time.sleep(0.1)
    if not failed:
        return 0
    rank, proc = failed[0]
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=10)
    code = proc.exitcode
    if code < 0:
        kills = oom_kills(cgroups[rank]) if cgroups[rank] is not None else 0
        detail = f": Memory cgroup out of memory (limit {limit_mib} MiB, oom_kill={kills})" if kills else ""
        print(f"grpo-ops: rank {rank} (pid {proc.pid}) was killed by {signal.Signals(-code).name}{detail}",
              file=sys.stderr, flush=True)
        return 128 - code
    return code


def gather_full(t: torch.Tensor, dim: int | None, world: int) -> torch.Tensor:
    """The unsharded tensor (every rank calls; all get the result)."""
    if world == 1 or dim is None:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def shard_of(full: torch.Tensor, dim: int | None, rank: int, world: int) -> torch.Tensor:
    if world == 1 or dim is None:
        return full
    return full.chunk(world, dim=dim)[rank].contiguous()


def all_max(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())
