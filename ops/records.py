"""What the supervisor records besides the journal: attempt results, the run outcome, state.json and
heartbeat.json snapshots, the environment grpo-ops set, and the checkpoint a launch resumes from.
Values are pure; `write_*` and `checkpoint_step` do file I/O.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import re
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.backends.base import Exit
from ops.classify import Failure
from ops.journal import iso_now, write_json_atomic
from ops.logs import redact_env
from ops.state import State

@dataclass(frozen=True)
class SupervisorOptions:
    poll_s: float = 0.2               # log / exit poll
    sample_s: float = 1.0             # memory, GPU, heartbeat, state.json
    grace_s: float = 10.0             # SIGTERM -> SIGKILL
    hang_factor: float = 3.0
    hang_floor_s: float = 300.0
    startup_timeout_s: float = 1800.0
    fatal_exit_grace_s: float = 60.0  # a fatal line was printed but the trainer lingers: stop it after this
    gpus: int | None = None
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stack_dumps: bool = True

    def __post_init__(self) -> None:
        for name in ("poll_s", "sample_s", "hang_factor", "hang_floor_s", "startup_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("poll_s", "grace_s", "hang_factor", "hang_floor_s",
                                              "startup_timeout_s", "gpus")}


_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class AttemptResult:
    attempt: int
    exit: Exit
    failure: Failure | None
    last_step: int | None
    duration_s: float
    startup_s: float | None
    stack_dumps: list[str] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float | None = None
    cancelled: bool = False

    def to_json(self) -> dict:
        e = self.exit
        return {"exit": {"code": e.code, "signal": e.signal, "oom_killed": e.oom_killed, "detail": e.detail},
                "failure": self.failure.to_json() if self.failure else None, "last_step": self.last_step,
                "duration_s": round(self.duration_s, 3),
                "startup_s": round(self.startup_s, 3) if self.startup_s is not None else None,
                "stack_dumps": self.stack_dumps, "peak_rss_mib": round(self.peak_rss_mib, 1),
                "peak_gpu_mib": self.peak_gpu_mib, "cancelled": self.cancelled}


@dataclass(frozen=True)
class RunOutcome:
    state: State
    reason: str
    attempts: int
    steps_done: int | None
    total_steps: int | None
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.state is State.SUCCEEDED


def checkpoint_step(checkpoint_dir: Path) -> int | None:
    """The highest complete `step_N` under the checkpoint dir (tmp_step_N is ignored), or None."""
    try:
        steps = [int(m.group(1)) for p in Path(checkpoint_dir).iterdir()
                 if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    except FileNotFoundError:
        return None
    return max(steps, default=None)


def attempt_env(env: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """Only the variables grpo-ops set or changed for the trainer, secrets redacted."""
    return redact_env({k: v for k, v in env.items() if base.get(k) != v})


def state_snapshot(sup: Any) -> dict:
    """state.json per docs/contracts.md, from the live supervisor."""
    w = sup.watch
    p = w.progress
    med = statistics.median(w.clock.intervals) if w.clock.intervals else p.step_time_s
    eta = None
    if med and p.total_steps and p.step is not None and not sup.state.is_terminal:
        eta = round(max(0, p.total_steps - (p.completed_step or p.step - 1)) * med, 1)
    return {"run_id": sup.run_id, "state": sup.state.value, "attempt": sup.attempt, "step": p.completed_step,
            "current_step": p.step, "total_steps": p.total_steps, "reward": p.reward, "accuracy": p.accuracy,
            "step_time_s": p.step_time_s, "eta_s": eta, "phase": p.phase,
            "started_ts": iso_now(sup.started_wall), "updated_ts": iso_now(sup.wall()),
            "supervisor_pid": os.getpid(), "failures": dict(sup.failures), "trainer": sup.spec.name,
            "plan": sup.plan.to_json(), "reason": sup.end_reason or None}


def write_state(path: Path, snap: dict) -> None:
    write_json_atomic(path, snap)


def write_heartbeat(path: Path, snap: dict) -> None:
    """Rewritten every watch tick; no fsync (a lost heartbeat only looks older)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"ts": time.time(), "pid": snap["supervisor_pid"], "state": snap["state"],
                               "step": snap["step"], "attempt": snap["attempt"]}))
    os.replace(tmp, path)


def trap_signals(on_signal: Callable) -> Callable[[], None]:
    """SIGTERM/SIGINT -> `on_signal` (the loop then stops the tree); SIGHUP ignored (a closed terminal must not
    end the run). Returns a function restoring the previous handlers. Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)
    return restore
