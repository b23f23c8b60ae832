"""The local backend: the trainer as a child process in its own session, output appended to the run's log,
optionally inside a per-attempt memory cgroup. Does I/O (processes, files, cgroups).

The child writes straight into `output.log` (an O_APPEND file descriptor), so a slow reader can never block
the trainer and pass-through costs nothing. With `memory_limit_mib`, a tiny `sh` shim moves itself into
the attempt's cgroup and then `exec`s the trainer, so the whole tree is limited from its first byte.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil

from ops import procs
from ops.backends.base import Exit, MemorySample, tree_rss_mib
from ops.cgroup import CgroupUnavailable, MemoryCgroup, stale_cgroups, wait_empty
from ops.errors import UserError
from training.spec import Launch

_SHIM = 'echo $$ > "$0" && exec "$@"'


class LocalHandle:
    def __init__(self, popen: subprocess.Popen, cgroup: MemoryCgroup | None):
        self.popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid            # start_new_session: the child leads its own session and group
        self.cgroup = cgroup
        self._oom_base = (cgroup.oom_kills() or 0) if cgroup else 0
        self._exit: Exit | None = None

    def _oom_delta(self) -> int:
        if self.cgroup is None:
            return 0
        return max(0, (self.cgroup.oom_kills() or 0) - self._oom_base)

    def poll(self) -> Exit | None:
        if self._exit is not None:
            return self._exit
        rc = self.popen.poll()
        if rc is None:
            return None
        kills = self._oom_delta()
        self._exit = Exit(code=rc if rc >= 0 else None, signal=-rc if rc < 0 else None,
                          oom_killed=(kills > 0) if self.cgroup else None,
                          detail=f"cgroup oom_kill +{kills}" if kills else "")
        return self._exit

    def pids(self) -> list[int]:
        out: list[int] = []
        try:
            root = psutil.Process(self.pid)
            out = [self.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.Error:
            pass
        if self.cgroup is not None:
            out += [p for p in self.cgroup.pids() if p not in out]
        return [p for p in out if psutil.pid_exists(p)]

    def memory(self) -> MemorySample | None:
        cg = self.cgroup
        return MemorySample(rss_mib=tree_rss_mib(self.pids()),
                            cgroup_usage_mib=cg.usage_mib() if cg else None,
                            cgroup_limit_mib=cg.limit_mib() if cg else None,
                            cgroup_oom_kills=self._oom_delta() if cg else None)

    def terminate(self, grace_s: float) -> Exit:
        """Stop the whole tree: the process group, then any descendant that left it; reap; drop the cgroup."""
        stragglers = [p for p in self.pids() if p != self.pid]
        procs.terminate_group(self.pgid, grace_s=grace_s)
        left = [p for p in stragglers if psutil.pid_exists(p)]
        if left:
            procs.terminate_pids(left, grace_s=min(grace_s, 2.0))
        try:
            self.popen.wait(timeout=max(grace_s, 1.0) + 5)
        except subprocess.TimeoutExpired:
            pass
        exit_ = self.poll() or Exit(None, None, detail="did not exit after SIGKILL")
        self.release()
        return exit_

    def release(self) -> None:
        if self.cgroup is not None:
            if self.cgroup.pids():
                procs.terminate_pids(self.cgroup.pids(), grace_s=1.0)
            wait_empty(self.cgroup, 5.0)
            self.cgroup.remove()

    def describe(self) -> dict:
        d: dict = {"backend": "local", "pid": self.pid, "pgid": self.pgid}
        if self.cgroup is not None:
            d["cgroup"] = str(self.cgroup.path)
        return d


RUN_DIR_VAR = "GRPO_OPS_RUN_DIR"     # the run's absolute results/<exp>: experiment names repeat across trees


def _run_dir_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            for item in fh.read().split(b"\0"):
                if item.startswith(RUN_DIR_VAR.encode() + b"="):
                    return item.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        return None
    return None


class LocalBackend:
    """`run_dir` (the run's absolute results/<exp>) narrows cleanup to this run's processes and cgroups: two
    results/ trees may hold the same experiment name."""
    name = "local"

    def __init__(self, memory_limit_mib: int | None = None, run_dir: str | Path | None = None):
        if memory_limit_mib is not None and memory_limit_mib < 16:
            raise UserError(f"--memory-limit-mib {memory_limit_mib} is too small; give at least 16 MiB")
        self.memory_limit_mib = memory_limit_mib
        self.run_dir = str(run_dir) if run_dir is not None else None

    def spawn(self, launch: Launch, log_path: Path) -> LocalHandle:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = list(launch.argv)
        cgroup = None
        if self.memory_limit_mib is not None:
            run_id = launch.labels.get("exp") or launch.env.get(procs.RUN_ID_VAR, "run")
            attempt = int(launch.labels.get("attempt") or launch.env.get(procs.ATTEMPT_VAR, 0))
            try:
                cgroup = MemoryCgroup.create(run_id, attempt, self.memory_limit_mib,
                                             launch.env.get(RUN_DIR_VAR) or self.run_dir)
            except CgroupUnavailable as err:
                raise UserError(f"--memory-limit-mib needs a memory cgroup: {err} (run as root, or drop the flag)")
            argv = ["/bin/sh", "-c", _SHIM, str(cgroup.procs_file), *argv]
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            popen = subprocess.Popen(argv, env=dict(launch.env), cwd=str(launch.cwd), stdin=subprocess.DEVNULL,
                                     stdout=fd, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as err:
            if cgroup is not None:
                cgroup.remove()
            raise UserError(f"cannot start {argv[0]!r}: {err}") from err
        finally:
            os.close(fd)
        return LocalHandle(popen, cgroup)

    def cleanup(self, run_id: str, dry_run: bool = False) -> list[str]:
        """Stop every process carrying GRPO_OPS_RUN_ID=<run_id> (not this one nor its ancestors); drop the
        run's stale cgroups."""
        table = procs.snapshot(with_markers=True)
        me = os.getpid()
        spare = {me, *procs.ancestors(table, me)}
        marked = [p for p in table.values() if p.run_id == run_id and p.pid not in spare]
        owned = [p for p in marked if self.run_dir is None or _run_dir_of(p.pid) == self.run_dir]
        lines = [f"leftover of this run: {procs.describe(p)}" for p in owned]
        lines += [f"not ours (same experiment name, other results dir): {procs.describe(p)}"
                  for p in marked if p not in owned]
        if owned:
            lines += procs.terminate_pids(owned, grace_s=5.0, dry_run=dry_run)
        for path in stale_cgroups(run_id, self.run_dir):
            if dry_run:
                lines.append(f"would remove stale cgroup {path}")
                continue
            cg = MemoryCgroup("v1" if "/memory/" in str(path) else "v2", path)
            if cg.pids():
                lines += procs.terminate_pids(cg.pids(), grace_s=2.0)
                wait_empty(cg, 5.0)
            lines.append(f"removed stale cgroup {path}" if cg.remove() else f"could not remove cgroup {path}")
        return lines
