"""The backend contract. The supervisor loop only talks to `Backend` and `Handle`.

A backend starts a `training.spec.Launch`, copies the trainer's output into `log_path` without ever blocking
the trainer, and reports how it ended as an `Exit`. It stops and cleans up only what it started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from training.spec import Launch


@dataclass(frozen=True)
class Exit:
    code: int | None                 # exit status; None when killed by a signal
    signal: int | None = None        # the terminating signal number, if any
    oom_killed: bool | None = None   # the backend's own verdict (cgroup oom_kill counter, Docker State.OOMKilled)
    detail: str = ""                 # e.g. Ray job message


@dataclass(frozen=True)
class MemorySample:
    rss_mib: float                    # the process tree's resident memory
    cgroup_usage_mib: float | None = None
    cgroup_limit_mib: float | None = None
    cgroup_oom_kills: int | None = None
    extra: dict = field(default_factory=dict)


def tree_rss_mib(pids: list[int]) -> float:
    """Resident memory of these processes, in MiB; a process that is gone counts 0. Reads /proc via psutil."""
    import psutil
    rss = 0
    for pid in pids:
        try:
            rss += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return rss / 2**20


class Handle(Protocol):
    def poll(self) -> Exit | None:
        """Non-blocking: the Exit once the trainer has ended, else None."""
        ...

    def pids(self) -> list[int]:
        """PIDs of the trainer's processes (for stack dumps); [] where not local."""
        ...

    def memory(self) -> MemorySample | None: ...

    def terminate(self, grace_s: float) -> Exit:
        """SIGTERM (or the backend's stop), wait up to grace_s, then SIGKILL; returns how it ended."""
        ...

    def describe(self) -> dict:
        """Identity for the journal: pid/pgid, container id, job id."""
        ...


def wait_exit(handle: "Handle", timeout_s: float, poll_s: float = 0.05,
              clock=None, sleep=None) -> Exit | None:
    """Poll `handle` until the trainer has ended; its Exit, or None after `timeout_s`. Clock and sleep are
    injectable (monotonic and time.sleep by default)."""
    import time
    clock, sleep = clock or time.monotonic, sleep or time.sleep
    deadline = clock() + timeout_s
    while True:
        found = handle.poll()
        if found is not None or clock() >= deadline:
            return found
        sleep(poll_s)


class Backend(Protocol):
    name: str

    def spawn(self, launch: Launch, log_path: Path) -> Handle: ...

    def cleanup(self, run_id: str, dry_run: bool = False) -> list[str]:
        """Stop this run's own leftovers (found by the GRPO_OPS_RUN_ID marker); lines saying what was done."""
        ...
