"""A per-attempt memory cgroup: create with a limit, put the trainer in it, read its OOM-kill counter,
remove it. Does I/O on /sys/fs/cgroup. Handles cgroup v1 (memory.limit_in_bytes, memory.oom_control's
`oom_kill`) and v2 (memory.max, memory.events' `oom_kill`).

v1 path: /sys/fs/cgroup/memory/grpo-ops/<run>/attempt-N ; v2: /sys/fs/cgroup/grpo-ops/<run>/attempt-N.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")
PARENT = "grpo-ops"


class CgroupUnavailable(RuntimeError):
    """No writable memory cgroup hierarchy here; `str()` says why."""


def detect() -> tuple[str, Path]:
    """("v1", root) or ("v2", root); raises CgroupUnavailable."""
    if (V1_ROOT / "memory.limit_in_bytes").exists():
        return "v1", V1_ROOT
    if (V2_ROOT / "cgroup.controllers").exists() and "memory" in (V2_ROOT / "cgroup.controllers").read_text():
        return "v2", V2_ROOT
    raise CgroupUnavailable("no memory cgroup controller found under /sys/fs/cgroup (v1 or v2)")


def safe_name(run_id: str, run_dir: str | None = None) -> str:
    """The run's cgroup directory name; with `run_dir`, a hash of it keeps two results/ trees holding the
    same experiment name apart."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("._") or "run"
    if run_dir:
        import hashlib
        name += "-" + hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]
    return name


@dataclass
class MemoryCgroup:
    version: str
    path: Path

    @classmethod
    def create(cls, run_id: str, attempt: int, limit_mib: int, run_dir: str | None = None) -> "MemoryCgroup":
        version, root = detect()
        path = root / PARENT / safe_name(run_id, run_dir) / f"attempt-{attempt}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            cg = cls(version, path)
            cg._set_limit(int(limit_mib) << 20)
        except OSError as err:
            raise CgroupUnavailable(f"cannot create memory cgroup {path}: {err}") from err
        return cg

    def _set_limit(self, nbytes: int) -> None:
        if self.version == "v1":
            (self.path / "memory.limit_in_bytes").write_text(str(nbytes))
            sw = self.path / "memory.memsw.limit_in_bytes"
            if sw.exists():   # no swap escape hatch: the limit is the limit
                try:
                    sw.write_text(str(nbytes))
                except OSError:
                    pass
        else:
            (self.path / "memory.max").write_text(str(nbytes))
            swap = self.path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def add(self, pid: int) -> None:
        self.procs_file.write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in self.procs_file.read_text().split()]
        except OSError:
            return []

    def oom_kills(self) -> int | None:
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            return None
        return 0

    def usage_mib(self) -> float | None:
        name = "memory.usage_in_bytes" if self.version == "v1" else "memory.current"
        try:
            return int((self.path / name).read_text()) / 2**20
        except (OSError, ValueError):
            return None

    def limit_mib(self) -> float | None:
        name = "memory.limit_in_bytes" if self.version == "v1" else "memory.max"
        try:
            return int((self.path / name).read_text()) / 2**20
        except (OSError, ValueError):
            return None

    def remove(self, timeout_s: float = 5.0) -> bool:
        """rmdir the cgroup (and the run's parent when empty); waits for the kernel to let go."""
        @retry(retry=retry_if_exception_type(OSError), stop=stop_after_delay(timeout_s), wait=wait_fixed(0.05),
               reraise=True)
        def _rmdir(p: Path) -> None:
            if p.exists():
                os.rmdir(p)
        try:
            _rmdir(self.path)
        except OSError:
            return False
        try:
            os.rmdir(self.path.parent)      # the run's directory, once its last attempt is gone
        except OSError:
            pass
        return True


def stale_cgroups(run_id: str, run_dir: str | None = None) -> list[Path]:
    """Attempt cgroups of `run_id` left behind (e.g. by a killed supervisor)."""
    try:
        _, root = detect()
    except CgroupUnavailable:
        return []
    base = root / PARENT / safe_name(run_id, run_dir)
    return sorted(p for p in base.glob("attempt-*") if p.is_dir()) if base.is_dir() else []


def wait_empty(cg: MemoryCgroup, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not cg.pids():
            return True
        time.sleep(0.05)
    return not cg.pids()
