"""The process table and process control: the one seam through which grpo-ops finds and signals processes.

- `snapshot()` reads the process table (I/O: psutil and /proc/PID/environ) into frozen `ProcInfo` rows,
  each carrying the full command line and the `GRPO_OPS_RUN_ID` ownership marker where readable.
- `classify(cmdline)` is pure: it names what a process is (vLLM worker, Ray daemon, Ray worker, NeMo Gym
  server) from its FULL command line. `/proc/PID/comm` is cut at 15 characters (`ray::VllmAsyncG`), so it is
  never used. A name only classifies; what may be killed is decided elsewhere, by ownership.
- `terminate_pids` / `terminate_group` signal (I/O): SIGTERM, wait a grace period, SIGKILL; "no such
  process" means already gone. Both return readable lines saying what was (or would be) done.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import psutil

RUN_ID_VAR = "GRPO_OPS_RUN_ID"
RUN_DIR_VAR = "GRPO_OPS_RUN_DIR"   # the run's absolute results/<exp>: names repeat across results trees
ATTEMPT_VAR = "GRPO_OPS_ATTEMPT"

VLLM_WORKER = "vllm_worker"
RAY_DAEMON = "ray_daemon"
RAY_WORKER = "ray_worker"
GYM_SERVER = "gym_server"
KINDS = (VLLM_WORKER, RAY_DAEMON, RAY_WORKER, GYM_SERVER)

# Ray actor titles of vLLM engines (NeMo RL's actors, and vLLM's own Ray TP workers).
_VLLM_TITLES = ("ray::VllmAsyncGenerationWorker", "ray::VllmGenerationWorker", "ray::RayWorkerWrapper")
_RAY_DAEMON_BINARIES = ("gcs_server", "raylet")
_RAY_DAEMON_SCRIPTS = ("ray/dashboard/dashboard.py", "ray/dashboard/agent.py", "ray/_private/log_monitor.py",
                       "ray/autoscaler/_private/monitor.py", "ray/_private/runtime_env/agent/main.py",
                       "ray.util.client.server")
_RAY_DAEMON_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray-dashboard-")
_GYM_MARKERS = ("nemo_gym", "resources_servers", "responses_api_models", "responses_api_agents")


@dataclass(frozen=True)
class ProcInfo:
    """One row of the process table."""
    pid: int
    ppid: int
    uid: int
    user: str
    create_time: float
    cmdline: tuple[str, ...]
    run_id: str | None = None       # GRPO_OPS_RUN_ID from /proc/PID/environ (None: absent or unreadable)
    attempt: str | None = None      # GRPO_OPS_ATTEMPT likewise
    pgid: int | None = None
    run_dir: str | None = None      # GRPO_OPS_RUN_DIR likewise

    @property
    def cmd(self) -> str:
        """The command line as one string (Ray pads process titles with spaces or NULs: stripped)."""
        return " ".join(a for a in self.cmdline if a).strip()

    @property
    def kind(self) -> str | None:
        return classify(self.cmdline)


def classify(cmdline: str | Iterable[str]) -> str | None:
    """What a process is, from its full command line: one of KINDS, or None. Pure.

    Only the program part counts (the first word, or a script/module it runs): a `sleep` or `grep` whose
    arguments mention vllm or Ray is nothing.
    """
    words = cmdline.split() if isinstance(cmdline, str) else [w for a in cmdline for w in a.split()]
    if not words:
        return None
    first = words[0]
    if first.startswith(_VLLM_TITLES):
        return VLLM_WORKER
    if first.startswith(_RAY_DAEMON_TITLES) or os.path.basename(first) in _RAY_DAEMON_BINARIES:
        return RAY_DAEMON
    if first.startswith("ray::"):
        return RAY_WORKER
    if not _is_python(first):
        return None
    program = _python_program(words[1:])
    if program is None:
        return None
    if any(program.endswith(s) or program == s for s in _RAY_DAEMON_SCRIPTS):
        return RAY_DAEMON
    if program.endswith("ray/_private/workers/default_worker.py"):
        return RAY_WORKER
    if os.path.basename(program) == "app.py" and any(m in " ".join(words) for m in _GYM_MARKERS):
        return GYM_SERVER
    return None


def _is_python(word: str) -> bool:
    return os.path.basename(word).startswith("python")


def _python_program(args: list[str]) -> str | None:
    """The script path (or `-m` module) a python command line runs; None for `-c` or nothing."""
    it = iter(args)
    for arg in it:
        if arg == "-m":
            return next(it, None)
        if arg == "-c":
            return None
        if arg.startswith("-"):
            continue
        return arg
    return None


def _read_marker(pid: int) -> tuple[str | None, str | None, str | None]:
    """(run_id, attempt, run_dir) from /proc/PID/environ; Nones when absent or unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None, None, None
    found: dict[str, str] = {}
    for item in raw.split(b"\0"):
        for var in (RUN_ID_VAR, ATTEMPT_VAR, RUN_DIR_VAR):
            prefix = var.encode() + b"="
            if item.startswith(prefix):
                found[var] = item[len(prefix):].decode(errors="replace")
    return found.get(RUN_ID_VAR), found.get(ATTEMPT_VAR), found.get(RUN_DIR_VAR)


def snapshot(with_markers: bool = True) -> dict[int, ProcInfo]:
    """The process table now, by pid. Processes that vanish while being read are left out."""
    table: dict[int, ProcInfo] = {}
    for p in psutil.process_iter(["pid", "ppid", "uids", "username", "create_time", "cmdline"]):
        info = p.info
        if info.get("create_time") is None:  # vanished mid-read
            continue
        uid = info["uids"].real if info.get("uids") else -1
        run_id, attempt, run_dir = _read_marker(info["pid"]) if with_markers else (None, None, None)
        try:
            pgid = os.getpgid(info["pid"])
        except OSError:
            pgid = None
        table[info["pid"]] = ProcInfo(
            pid=info["pid"], ppid=info.get("ppid") or 0, uid=uid, user=info.get("username") or str(uid),
            create_time=info["create_time"], cmdline=tuple(info.get("cmdline") or ()),
            run_id=run_id, attempt=attempt, pgid=pgid, run_dir=run_dir)
    return table


def ancestors(table: Mapping[int, ProcInfo], pid: int) -> list[int]:
    """The parent chain of `pid` (nearest first), as far as the table knows it. Pure."""
    chain: list[int] = []
    seen = {pid}
    cur = table.get(pid)
    while cur is not None and cur.ppid and cur.ppid not in seen:
        chain.append(cur.ppid)
        seen.add(cur.ppid)
        cur = table.get(cur.ppid)
    return chain


def descendants(table: Mapping[int, ProcInfo], pid: int) -> list[int]:
    """Every process below `pid` in the table (breadth first). Pure."""
    children: dict[int, list[int]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out: list[int] = []
    todo = list(children.get(pid, ()))
    while todo:
        nxt = todo.pop(0)
        if nxt in out:
            continue
        out.append(nxt)
        todo.extend(children.get(nxt, ()))
    return out


def describe(p: ProcInfo, width: int = 120) -> str:
    """`pid 123 (user alice): ray::VllmAsyncGenerationWorker` cut to `width`. Pure."""
    cmd = p.cmd or "?"
    if len(cmd) > width:
        cmd = cmd[: width - 3] + "..."
    return f"pid {p.pid} (user {p.user}): {cmd}"


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def terminate_pids(pids: Iterable[int | ProcInfo], grace_s: float = 5.0, dry_run: bool = False,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """SIGTERM each process, wait up to `grace_s` for all, SIGKILL the rest. Returns one line per action.

    A `ProcInfo` pins the process by its start time: a pid reused since the snapshot is left alone.
    """
    lines: list[str] = []
    targets: list[tuple[int, psutil.Process]] = []
    for item in pids:
        pid = item.pid if isinstance(item, ProcInfo) else int(item)
        try:
            proc = psutil.Process(pid)
            if isinstance(item, ProcInfo) and abs(proc.create_time() - item.create_time) > 0.05:
                lines.append(f"pid {pid} already gone (pid reused by another process; left alone)")
                continue
        except psutil.NoSuchProcess:
            lines.append(f"pid {pid} already gone")
            continue
        if dry_run:
            lines.append(f"would SIGTERM pid {pid}, then SIGKILL after {grace_s:g} s if still alive")
            continue
        try:
            proc.send_signal(signal.SIGTERM)  # psutil refuses if the pid was reused since Process()
            lines.append(f"SIGTERM pid {pid}")
            targets.append((pid, proc))
        except psutil.NoSuchProcess:
            lines.append(f"pid {pid} already gone")
        except psutil.AccessDenied:
            lines.append(f"pid {pid}: permission denied (not signalled)")
    deadline = clock() + grace_s
    while targets and clock() < deadline:
        targets = [(pid, proc) for pid, proc in targets if _live(proc)]
        if targets:
            sleep(0.05)
    for pid, proc in targets:
        if not _live(proc):
            continue
        try:
            proc.send_signal(signal.SIGKILL)
            lines.append(f"SIGKILL pid {pid} (still alive after {grace_s:g} s)")
        except psutil.NoSuchProcess:
            lines.append(f"pid {pid} exited")
    return lines


def _group_members(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (OSError, psutil.Error):
            continue
    return out


def terminate_group(pgid: int, grace_s: float = 5.0, dry_run: bool = False,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """SIGTERM process group `pgid`, wait up to `grace_s` for its live members, SIGKILL the group."""
    if dry_run:
        return [f"would SIGTERM process group {pgid}, then SIGKILL after {grace_s:g} s if still alive"]
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return [f"process group {pgid} already gone"]
    lines = [f"SIGTERM process group {pgid}"]
    deadline = clock() + grace_s
    while clock() < deadline:
        if not _group_members(pgid):
            return lines + [f"process group {pgid} exited"]
        sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
        lines.append(f"SIGKILL process group {pgid} (still alive after {grace_s:g} s)")
    except ProcessLookupError:
        lines.append(f"process group {pgid} exited")
    return lines
