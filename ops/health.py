"""Is the supervised run alive and making progress? The verdict behind `ops health` (Docker HEALTHCHECK,
Kubernetes / systemd probes).

`judge(RunSnapshot, HealthLimits, now)` is pure. `read_snapshot` and `find_latest` read a few small files
(heartbeat.json, state.json, the journal's tail, /proc/locks); nothing here touches a GPU or a subprocess,
so a probe costs the CLI's start-up plus a few milliseconds.

Verdicts: healthy (supervisor beating, steps coming; or busy: heartbeat stale up to max_busy_s while it
still holds its lock), succeeded (finished well), hung (heartbeat stale past max_busy_s with the lock held,
or no new step / no first step for too long), dead (heartbeat stale and nobody holds the lock), given_up
(a terminal FAILED_* / CANCELLED state), no_run (nothing to judge yet).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from training.spec import RunPaths

_TERMINAL = {"SUCCEEDED", "FAILED_PREFLIGHT", "FAILED_CONFIG", "FAILED_OOM", "FAILED_HANG", "FAILED_CRASH",
             "FAILED_BUDGET", "CANCELLED"}
_SKIP_DIRS = ("step_", "tmp_step_", "exp_")          # checkpoints and per-launch log dirs: never runs
_JOURNAL_TAIL_BYTES = 1 << 20


@dataclass(frozen=True)
class HealthLimits:
    max_heartbeat_age_s: float = 30.0    # the supervisor rewrites heartbeat.json every <= 1 s
    max_step_age_s: float = 1800.0       # RUNNING, after the attempt's first step: longest gap between steps
    max_startup_s: float = 3600.0        # RUNNING, launch -> first step (venv builds, model load, vLLM start)
    max_busy_s: float = 900.0            # a stale heartbeat while the supervisor still holds its lock: it may
                                         # be busy (preflight, py-spy dumps of many processes, a stop's grace)

    def __post_init__(self) -> None:
        for name in ("max_heartbeat_age_s", "max_step_age_s", "max_startup_s", "max_busy_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class RunSnapshot:
    """What a probe read about one experiment; plain data, built by `read_snapshot`."""
    exp: str | None
    heartbeat: dict | None = None            # heartbeat.json
    state: dict | None = None                # state.json
    attempt: int | None = None               # the latest attempt_start's attempt
    attempt_start_wall: float | None = None  # its wall time (epoch s)
    last_step_wall: float | None = None      # the latest progress record of that attempt
    run_end: dict | None = None              # the run_end record, once written
    lock_held: bool | None = None            # someone holds supervisor.lock; None: cannot tell


@dataclass(frozen=True)
class Verdict:
    status: str                  # healthy | succeeded | hung | dead | given_up | no_run
    reason: str                  # one line a person can act on
    exp: str | None = None
    state: str | None = None
    step: int | None = None
    heartbeat_age_s: float | None = None

    @property
    def is_healthy(self) -> bool:
        return self.status in ("healthy", "succeeded")

    def to_json(self) -> dict:
        return {"healthy": self.is_healthy, "status": self.status, "reason": self.reason, "exp": self.exp,
                "state": self.state, "step": self.step, "heartbeat_age_s": self.heartbeat_age_s}


def judge(snap: RunSnapshot, limits: HealthLimits, now: float) -> Verdict:
    """The verdict on one experiment at wall time `now`. Pure."""
    hb, st = snap.heartbeat or {}, snap.state or {}
    if not hb and not st and snap.run_end is None:
        return Verdict("no_run", "no supervised run found yet (no heartbeat.json)", snap.exp)
    state = (snap.run_end or {}).get("state") or hb.get("state") or st.get("state")
    step = hb.get("step", st.get("step"))
    age = round(now - float(hb["ts"]), 1) if "ts" in hb else None
    v = dict(exp=snap.exp, state=state, step=step, heartbeat_age_s=age)
    if state == "SUCCEEDED":
        return Verdict("succeeded", f"run finished: SUCCEEDED at step {step}", **v)
    if state in _TERMINAL:
        why = (snap.run_end or {}).get("reason") or st.get("reason") or ""
        return Verdict("given_up", f"run ended {state}" + (f": {why}" if why else ""), **v)
    if age is None or age > limits.max_heartbeat_age_s:
        if snap.lock_held is True and age is not None and age <= limits.max_busy_s:
            return Verdict("healthy", f"supervisor busy in {state}: heartbeat {age:.0f} s old while it holds "
                                      f"supervisor.lock (limit {limits.max_busy_s:g} s)", **v)
        if snap.lock_held is True:
            seen = "no heartbeat" if age is None else f"heartbeat {age:.0f} s old (limit {limits.max_busy_s:g} s)"
            return Verdict("hung", f"supervisor stuck: {seen} while it still holds supervisor.lock", **v)
        seen = "no heartbeat" if age is None else f"heartbeat {age:.0f} s old (limit {limits.max_heartbeat_age_s:g} s)"
        gone = "supervisor gone" if snap.lock_held is False else "supervisor dead or stuck"
        return Verdict("dead", f"{gone}: {seen} in state {state}", **v)
    if state == "RUNNING" and snap.attempt_start_wall is not None:
        if snap.last_step_wall is not None:
            gap = now - snap.last_step_wall
            if gap > limits.max_step_age_s:
                return Verdict("hung", f"no new step for {gap:.0f} s after step {step} "
                                       f"(limit {limits.max_step_age_s:g} s)", **v)
        else:
            wait = now - snap.attempt_start_wall
            if wait > limits.max_startup_s:
                return Verdict("hung", f"attempt {snap.attempt} has made no step {wait:.0f} s after launch "
                                       f"(limit {limits.max_startup_s:g} s)", **v)
    return Verdict("healthy", f"{state} step {step}, heartbeat {age:.1f} s old", **v)


# ---------------------------------------------------------------------- reading (small file I/O only)
def read_snapshot(exp: str | None, paths: RunPaths) -> RunSnapshot:
    attempt, start_wall, step_wall, run_end = _scan_journal(paths.journal)
    return RunSnapshot(exp, _read_json(paths.heartbeat), _read_json(paths.state_file), attempt, start_wall,
                       step_wall, run_end, lock_held(paths.ops_dir / "supervisor.lock"))


def find_latest(results: Path, max_depth: int = 4) -> tuple[str, RunPaths] | None:
    """The experiment whose heartbeat.json changed last; walks at most `max_depth` levels and never enters
    checkpoint or exp_NNN dirs, so a probe stays fast on a results tree full of checkpoints."""
    best: tuple[float, Path] | None = None
    stack = [(Path(results), 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            mtime = (folder / "ops" / "heartbeat.json").stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, folder)
        except OSError:
            pass
        if depth >= max_depth:
            continue
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        stack += [(Path(e.path), depth + 1) for e in entries
                  if e.is_dir(follow_symlinks=False) and e.name != "ops" and not e.name.startswith(_SKIP_DIRS)]
    if best is None:
        return None
    return str(best[1].relative_to(results)), RunPaths(best[1])


def lock_held(path: Path) -> bool | None:
    """Whether any process holds a lock on `path`, read from /proc/locks (taking no lock ourselves, so a
    probe never races a supervisor that is starting). None when it cannot be told."""
    try:
        ino = os.stat(path).st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 00:2f:1311 0 EOF" (blocked waiters carry "->" and are skipped)
        if len(parts) >= 6 and parts[1] != "->" and parts[5].rsplit(":", 1)[-1] == str(ino):
            return True
    return False


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _scan_journal(path: Path) -> tuple[int | None, float | None, float | None, dict | None]:
    """(latest attempt, its start wall time, its latest progress wall time, run_end) from the journal."""
    records = _journal_tail(path, _JOURNAL_TAIL_BYTES)
    if records and not any(r.get("kind") == "attempt_start" for r in records):
        records = _journal_tail(path, None)       # a very long attempt: read it all once
    attempt = start = step = run_end = None
    for r in records:
        kind = r.get("kind")
        if kind == "attempt_start":
            attempt, start, step = r.get("attempt"), _wall(r.get("ts")), None
        elif kind == "progress" and r.get("attempt") == attempt:
            step = _wall(r.get("ts"))
        elif kind == "run_end":
            run_end = r
    return attempt, start, step, run_end


def _journal_tail(path: Path, nbytes: int | None) -> list[dict]:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if nbytes is not None and size > nbytes:
                fh.seek(size - nbytes)
                data = fh.read().split(b"\n", 1)[-1]        # drop the partial first line
            else:
                data = fh.read()
    except OSError:
        return []
    out = []
    for raw in data.split(b"\n")[:-1]:                       # the piece after the last \n is torn
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _wall(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
