"""Which local Ray cluster NeMo RL would attach to, and which processes belong to it.

NeMo RL calls `ray.init(address="auto")`: Ray takes `RAY_ADDRESS` first, else the GCS address written by
the last `ray start` into `<ray temp dir>/ray_current_cluster` (the temp dir is `$RAY_TMPDIR/ray`, else
`$TMPDIR/ray`, else `/tmp/ray`). A cluster's processes are identified by its session directory or GCS
address in their command lines, plus everything below them in the process tree (workers are children of
the raylet). Never by name: other people's clusters on the same node look the same by name.

`find_target` reads files (I/O); `cluster_members`, `sessions` and `orphaned` are pure over a process table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ops import procs
from ops.procs import ProcInfo

_SESSION_RE = re.compile(r"(/\S*?/session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+)")
_GCS_RE = re.compile(r"--(?:gcs[-_])?address[= ](\S+)")


@dataclass(frozen=True)
class RayTarget:
    """The cluster `ray.init(address="auto")` would pick."""
    address: str                 # host:port (or a ray:// / http:// URL from RAY_ADDRESS)
    source: str                  # "RAY_ADDRESS" or the ray_current_cluster file's path
    temp_dir: Path               # the Ray temp dir consulted
    session_dir: str | None      # found from the running processes; None when none run
    members: tuple[int, ...]     # pids of its local processes (empty: not running here)
    uid: int | None              # owner of its raylet / gcs_server (None: not running here)

    @property
    def is_running(self) -> bool:
        return bool(self.members)


def ray_temp_dir(env: Mapping[str, str]) -> Path:
    """Ray's default temp dir for this environment (mirrors ray._common.utils.get_default_ray_temp_dir)."""
    base = env.get("RAY_TMPDIR") or env.get("TMPDIR") or "/tmp"
    return Path(base) / "ray"


def session_of(p: ProcInfo) -> str | None:
    """The session directory named in a process's command line, if any. Pure."""
    m = _SESSION_RE.search(" ".join(p.cmdline))
    return m.group(1) if m else None


def gcs_address_of(p: ProcInfo) -> str | None:
    m = _GCS_RE.search(" ".join(p.cmdline))
    return m.group(1) if m else None


def sessions(table: Mapping[int, ProcInfo]) -> dict[str, list[ProcInfo]]:
    """Every local Ray session (by session dir) with its daemons. Pure."""
    out: dict[str, list[ProcInfo]] = {}
    for p in table.values():
        if p.kind == procs.RAY_DAEMON:
            s = session_of(p)
            if s:
                out.setdefault(s, []).append(p)
    return out


def session_for_address(table: Mapping[int, ProcInfo], gcs_address: str) -> str | None:
    """The session dir of the local cluster whose daemons name `gcs_address`. Pure."""
    for p in table.values():
        if p.kind == procs.RAY_DAEMON and gcs_address_of(p) == gcs_address:
            s = session_of(p)
            if s:
                return s
    return None


def cluster_members(table: Mapping[int, ProcInfo], session_dir: str | None,
                    gcs_address: str | None = None) -> list[int]:
    """Pids of one cluster: processes naming its session dir or GCS address, and all their descendants."""
    roots = []
    for p in table.values():
        text = " ".join(p.cmdline)
        if (session_dir and session_dir + "/" in text + "/") or \
                (gcs_address and (gcs_address_of(p) == gcs_address)):
            roots.append(p.pid)
    members: list[int] = []
    for pid in roots:
        for m in (pid, *procs.descendants(table, pid)):
            if m not in members:
                members.append(m)
    return members


def orphaned(table: Mapping[int, ProcInfo], p: ProcInfo) -> bool:
    """True when a Ray worker has no raylet above it, or a Ray daemon's cluster has no gcs_server. Pure."""
    kind = p.kind
    if kind in (procs.VLLM_WORKER, procs.RAY_WORKER):
        return not any(table[a].kind == procs.RAY_DAEMON for a in procs.ancestors(table, p.pid) if a in table)
    if kind == procs.RAY_DAEMON:
        s = session_of(p)
        if s is None:  # cannot tell which cluster it serves: report it, never call it a leftover
            return False
        return not any("gcs_server" in os.path.basename(q.cmdline[0]) for q in sessions(table).get(s, ())
                       if q.cmdline)
    if kind == procs.GYM_SERVER:
        return p.ppid in (0, 1) or p.ppid not in table
    return False


def _owner(table: Mapping[int, ProcInfo], members: list[int]) -> int | None:
    for pid in members:
        p = table.get(pid)
        if p and p.cmdline and os.path.basename(p.cmdline[0]) in ("raylet", "gcs_server"):
            return p.uid
    return table[members[0]].uid if members and members[0] in table else None


def find_target(env: Mapping[str, str], table: Mapping[int, ProcInfo]) -> RayTarget | None:
    """The cluster NeMo RL would attach to, or None when Ray would start a fresh one (I/O: reads files)."""
    temp = ray_temp_dir(env)
    address = (env.get("RAY_ADDRESS") or "").strip()
    source = "RAY_ADDRESS"
    if not address or address == "auto":
        path = temp / "ray_current_cluster"
        try:
            address = path.read_text().strip()
        except OSError:
            return None
        source = str(path)
        if not address:
            return None
    if "://" in address and not address.startswith("ray://127.0.0.1"):
        return RayTarget(address, source, temp, None, (), None)
    gcs = address.split("://", 1)[-1]
    session = session_for_address(table, gcs)
    members = cluster_members(table, session, gcs) if session else []
    return RayTarget(address, source, temp, session, tuple(members), _owner(table, members))


def forget_address(target: RayTarget) -> None:
    """Remove `ray_current_cluster` when it names the (stopped) target, as `ray stop` does."""
    if target.source == "RAY_ADDRESS":
        return
    path = Path(target.source)
    try:
        if path.read_text().strip() == target.address:
            path.unlink()
    except OSError:
        pass
