"""Experiments under results/: names, the safety of a name, the per-experiment lock, finding the latest,
and what `--resume` reads back from a journal. Does file I/O (directory listing, flock, journal reads).

Names default to the tutorial's `<YYYYMMDD>/<trainer>/<config stem>_NNN`; a name that would escape
`results/` (absolute, `..`, symlinked out) is refused.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ops.errors import UserError
from ops.journal import read_journal
from ops.remedies import PastAttempt
from training.spec import Plan, RunPaths

_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


def default_exp_name(trainer: str, config_path: Path, results: Path, today: dt.date) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(config_path).stem) or "config"
    base = f"{today:%Y%m%d}/{trainer}/{stem}"
    n = 1
    while (results / f"{base}_{n:03d}").exists():
        n += 1
    return f"{base}_{n:03d}"


def exp_dir(name: str, results: Path) -> Path:
    """results/<name>, refusing names that escape results/."""
    parts = name.strip("/").split("/")
    if not name or name.startswith("/") or any(not _NAME_PART.match(p) for p in parts):
        raise UserError(f"experiment name {name!r} is not allowed; use letters, digits, '_.-' and '/' "
                        "between parts, relative to results/ (e.g. 20261125/embedded/my_run_001)")
    root = results.resolve()
    path = (results / "/".join(parts)).resolve()
    if root != path and root not in path.parents:
        raise UserError(f"experiment name {name!r} escapes {results}/; choose a name inside it")
    return results / "/".join(parts)


def list_exps(results: Path) -> list[tuple[float, str]]:
    """(mtime of the journal, name) for every experiment with a journal, oldest first."""
    out = []
    for journal in results.glob("**/ops/journal.jsonl"):
        root = journal.parent.parent
        try:
            out.append((journal.stat().st_mtime, str(root.relative_to(results))))
        except (OSError, ValueError):
            continue
    return sorted(out)


def resolve_exp(name: str | None, results: Path) -> tuple[str, RunPaths]:
    """The named experiment, or the latest one; UserError when there is none."""
    if name is None:
        exps = list_exps(results)
        if not exps:
            raise UserError(f"no experiment found under {results}/; start one with `ops run`")
        name = exps[-1][1]
    root = exp_dir(name, results)
    if not (root / "ops").is_dir() and not (root / "output.log").exists():
        raise UserError(f"no experiment {name!r} under {results}/; see `ls {results}`")
    return name, RunPaths(root)


class RunLock:
    """flock on results/<exp>/ops/supervisor.lock: one supervisor per experiment."""

    def __init__(self, paths: RunPaths, exp: str):
        self.path = paths.ops_dir / "supervisor.lock"
        self.exp = exp
        self.fd = -1

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"experiment {self.exp!r} is already supervised by pid {holder}; watch it with "
                            f"`ops status {self.exp}` or stop it with `kill {holder}`") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_supervised(paths: RunPaths) -> bool:
    """True when a live supervisor holds the experiment's lock."""
    path = paths.ops_dir / "supervisor.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ResumeInfo:
    """What a new supervisor needs to continue a run from its journal."""
    trainer: str
    plan: Plan
    attempts: int
    history: tuple[PastAttempt, ...]
    options: dict = field(default_factory=dict)
    state: str | None = None
    ended: bool = False


def resume_info(paths: RunPaths) -> ResumeInfo:
    records = read_journal(paths.journal)
    start = next((r for r in records if r["kind"] == "run_start"), None)
    if start is None:
        raise UserError(f"{paths.journal} has no run_start record; nothing to resume (start a new run)")
    plan = Plan.from_json(start["plan"])
    attempts, history, state, ended = 0, [], None, False
    for r in records:
        if r["kind"] == "attempt_start":
            plan, attempts = Plan.from_json(r["plan"]), max(attempts, r["attempt"])
        elif r["kind"] == "attempt_end":
            kind = (r.get("failure") or {}).get("kind")
            history.append(PastAttempt(Plan.from_json(r["plan"]) if r.get("plan") else plan, kind,
                                       r.get("last_step")))
        elif r["kind"] == "decision" and r.get("new_plan"):
            plan = Plan.from_json(r["new_plan"])
        elif r["kind"] == "transition":
            state = r["to"]
        elif r["kind"] == "run_end":
            ended, state = True, r["state"]
    return ResumeInfo(start["trainer"], plan, attempts, tuple(history), dict(start.get("options") or {}),
                      state, ended)
