"""Host checks: `host` (free disk where results and checkpoints go, /dev/shm size, open-files limit,
available memory inside this cgroup) and `wandb` (an API key or an offline/disabled mode; the key itself
is never printed). Readings are I/O (statvfs, rlimits, /proc, /sys/fs/cgroup); verdicts are pure.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from healthchecks.base import CheckContext, CheckResult, Status, register

GIB = 1024 ** 3
MIN_SHM_GIB = 1.0          # Docker's default is 64 MB: Ray's object store and NCCL need far more
WANT_SHM_GIB = 8.0
WANT_NOFILE = 65536
MIN_AVAIL_GIB = 4.0
WANT_AVAIL_GIB = 16.0


@dataclass(frozen=True)
class HostReading:
    results_dir: str
    disk_free_gib: float | None        # None: no existing ancestor could be read
    disk_writable: bool
    shm_gib: float | None
    nofile_soft: int
    nofile_hard: int
    mem_available_gib: float
    cgroup_limit_gib: float | None     # the memory cgroup's limit when lower than physical RAM


def _existing_ancestor(path: Path) -> Path | None:
    path = path.absolute()
    for p in (path, *path.parents):
        if p.exists():
            return p
    return None


def _cgroup_memory() -> tuple[int, int] | None:
    """(limit, usage) in bytes of this process's memory cgroup (v1 or v2); None when unlimited/unknown."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):
            base, files = Path("/sys/fs/cgroup/memory") / rel.lstrip("/"), ("memory.limit_in_bytes",
                                                                            "memory.usage_in_bytes")
        elif controllers == "":
            base, files = Path("/sys/fs/cgroup") / rel.lstrip("/"), ("memory.max", "memory.current")
        else:
            continue
        try:
            limit, usage = ((base / f).read_text().strip() for f in files)
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < psutil.virtual_memory().total:
            return int(limit), int(usage)
    return None


def read_host(results_dir: Path) -> HostReading:
    anc = _existing_ancestor(results_dir)
    free = writable = None
    if anc is not None:
        try:
            st = os.statvfs(anc)
            free = st.f_bavail * st.f_frsize / GIB
        except OSError:
            free = None
        writable = anc.is_dir() and os.access(anc, os.W_OK | os.X_OK)
    try:
        st = os.statvfs("/dev/shm")
        shm = st.f_blocks * st.f_frsize / GIB
    except OSError:
        shm = None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cg = _cgroup_memory()
    avail = psutil.virtual_memory().available
    if cg is not None:
        avail = min(avail, max(0, cg[0] - cg[1]))
    return HostReading(str(results_dir), free, bool(writable), shm, soft, hard, avail / GIB,
                       cg[0] / GIB if cg is not None else None)


def _unlimited(n: int) -> bool:
    return n == resource.RLIM_INFINITY or n < 0


def judge_host(r: HostReading, min_free_disk_gib: float) -> CheckResult:
    """Pure verdict over one host reading."""
    fails, warns, fixes, parts = [], [], [], []
    if r.disk_free_gib is None:
        fails.append(f"cannot read free space for {r.results_dir}")
        fixes.append("choose a --results-dir on a mounted, readable volume")
    else:
        parts.append(f"{r.disk_free_gib:.0f} GiB free at {r.results_dir}")
        if not r.disk_writable:
            fails.append(f"{r.results_dir} is not writable")
            fixes.append(f"choose a writable --results-dir (or fix permissions of {r.results_dir})")
        if r.disk_free_gib < min_free_disk_gib:
            fails.append(f"only {r.disk_free_gib:.1f} GiB free for results/checkpoints (< {min_free_disk_gib:g})")
            fixes.append("free disk space or point --results-dir at a larger volume")
    if r.shm_gib is None:
        warns.append("no /dev/shm")
    else:
        parts.append(f"/dev/shm {r.shm_gib:.1f} GiB")
        if r.shm_gib < MIN_SHM_GIB:
            fails.append(f"/dev/shm is only {r.shm_gib * 1024:.0f} MiB (Ray's object store lives there)")
            fixes.append("docker run --shm-size=16g (or --ipc=host)")
        elif r.shm_gib < WANT_SHM_GIB:
            warns.append(f"/dev/shm is {r.shm_gib:.1f} GiB (< {WANT_SHM_GIB:g})")
            fixes.append("docker run --shm-size=16g (or --ipc=host)")
    nofile = "unlimited" if _unlimited(r.nofile_soft) else str(r.nofile_soft)
    parts.append(f"open files {nofile}")
    if not _unlimited(r.nofile_soft) and r.nofile_soft < WANT_NOFILE and \
            not (_unlimited(r.nofile_hard) or r.nofile_hard >= WANT_NOFILE):
        warns.append(f"open-files limit {r.nofile_soft} (hard {r.nofile_hard}) < {WANT_NOFILE}")
        fixes.append(f"ulimit -n {WANT_NOFILE} (docker: --ulimit nofile={WANT_NOFILE}:{WANT_NOFILE})")
    mem = f"{r.mem_available_gib:.1f} GiB RAM available"
    if r.cgroup_limit_gib is not None:
        mem += f" (cgroup limit {r.cgroup_limit_gib:.1f} GiB)"
    parts.append(mem)
    if r.mem_available_gib < MIN_AVAIL_GIB:
        fails.append(f"only {r.mem_available_gib:.1f} GiB host memory available")
        fixes.append("stop other jobs on this node or raise the container's memory limit")
    elif r.mem_available_gib < WANT_AVAIL_GIB:
        warns.append(f"{r.mem_available_gib:.1f} GiB host memory available (< {WANT_AVAIL_GIB:g})")
        fixes.append("stop other jobs on this node or raise the container's memory limit")
    status = Status.FAIL if fails else Status.WARN if warns else Status.PASS
    detail = "; ".join(fails + warns) + (" | " if fails or warns else "") + ", ".join(parts)
    data = {"results_dir": r.results_dir, "disk_free_gib": r.disk_free_gib, "disk_writable": r.disk_writable,
            "shm_gib": r.shm_gib, "nofile_soft": r.nofile_soft, "nofile_hard": r.nofile_hard,
            "mem_available_gib": round(r.mem_available_gib, 2), "cgroup_limit_gib": r.cgroup_limit_gib}
    return CheckResult("host", status, detail, "; ".join(dict.fromkeys(fixes)), data)


@register("host")
def check_host(ctx: CheckContext) -> CheckResult:
    return judge_host(read_host(Path(ctx.results_dir)), ctx.min_free_disk_gib)


# --- wandb ----------------------------------------------------------------------------------------------
def _netrc_has_wandb(env: Mapping[str, str]) -> bool:
    path = Path(env.get("NETRC") or Path(env.get("HOME", "~")).expanduser() / ".netrc")
    try:
        text = path.read_text()
    except OSError:
        return False
    return "api.wandb.ai" in text or (env.get("WANDB_BASE_URL", "").split("//")[-1] or "\0") in text


def judge_wandb(env: Mapping[str, str], netrc: bool, required: bool) -> CheckResult:
    """Pure verdict. The key's value never enters the result: only whether it is set and its length."""
    mode = (env.get("WANDB_MODE") or "").strip().lower()
    key = env.get("WANDB_API_KEY") or ""
    data = {"WANDB_MODE": mode or None, "api_key_set": bool(key), "netrc": netrc}
    if mode in ("offline", "disabled", "dryrun"):
        return CheckResult("wandb", Status.PASS, f"WANDB_MODE={mode}: no W&B server needed", "", data)
    if key.strip():
        if len(key.strip()) < 40:
            return CheckResult("wandb", Status.WARN, f"WANDB_API_KEY is set but only {len(key.strip())} "
                               "characters (W&B keys are 40 or more; truncated?)",
                               "copy the whole key from https://wandb.ai/authorize", data)
        return CheckResult("wandb", Status.PASS, "WANDB_API_KEY is set (value hidden)", "", data)
    if netrc:
        return CheckResult("wandb", Status.PASS, "W&B credentials found in ~/.netrc (wandb login)", "", data)
    return CheckResult("wandb", Status.FAIL if required else Status.WARN,
                       "no WANDB_API_KEY, no wandb login, and WANDB_MODE is not offline/disabled: wandb.init "
                       "would stop and prompt for a key",
                       "put your key in WANDB_API_KEY (in the environment or via wandb login, never on a "
                       "shared command line), or export WANDB_MODE=offline", data)


@register("wandb")
def check_wandb(ctx: CheckContext) -> CheckResult:
    return judge_wandb(ctx.env, _netrc_has_wandb(ctx.env), required=(ctx.trainer == "nemo-rl"))
