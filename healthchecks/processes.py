"""Process checks: `stale_processes` (vLLM workers, Ray daemons and workers, NeMo Gym servers; this user's and
other users') and `ray_cluster` (the cluster NeMo RL's `ray.init(address="auto")` would attach to), with
their fixes. Names only classify; a process is a *leftover* (and `--fix` may signal it) only when it is this
user's AND belongs to the target cluster with no live driver attached, or is orphaned, or carries the
GRPO_OPS_RUN_ID marker of a run whose supervisor is gone (its heartbeat.json names a dead pid). Other users'
processes are reported, never touched. The verdicts are pure over a process table; reading the table,
the driver logs and signalling are I/O.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from healthchecks.base import CheckContext, CheckResult, Status, register, register_fix
from ops import procs, ray_local
from ops.procs import ProcInfo
from ops.ray_local import RayTarget

FIX_GRACE_S = 5.0
_DRIVER_LOG = re.compile(r"python-core-driver-[0-9a-f]+_(\d+)\.log$")


@dataclass(frozen=True)
class Finding:
    proc: ProcInfo
    kind: str
    mine: bool
    leftover: bool          # this user's, and safe for --fix to stop
    why: str                # "in the target cluster", "orphaned", "in use by driver pid N", "other user"


def self_pids(table: Mapping[int, ProcInfo], pid: int | None = None) -> set[int]:
    pid = os.getpid() if pid is None else pid
    return {pid, *procs.ancestors(table, pid)}


def live_drivers(target: RayTarget | None, table: Mapping[int, ProcInfo]) -> list[int]:
    """Pids of drivers attached to the target cluster that are still running (from its driver logs)."""
    if target is None or not target.session_dir:
        return []
    out = []
    try:
        names = os.listdir(Path(target.session_dir) / "logs")
    except OSError:
        return []
    for name in names:
        m = _DRIVER_LOG.match(name)
        if m and int(m.group(1)) in table:
            pid = int(m.group(1))
            try:  # a pid reused after the driver died started after its log was created
                if table[pid].create_time <= os.stat(Path(target.session_dir) / "logs" / name).st_mtime + 1:
                    out.append(pid)
            except OSError:
                continue
    return sorted(out)


RUN_PROCESS = "grpo_ops_run"     # an unclassified process carrying the GRPO_OPS_RUN_ID marker


def run_key(p: ProcInfo) -> str | None:
    """Which run a marked process belongs to: its absolute run dir when it carries one (names repeat across
    results trees), else its run id."""
    return p.run_dir or p.run_id


def dead_runs(table: Mapping[int, ProcInfo], results_dir: Path, uid: int) -> set[str]:
    """Runs (by `run_key`) of this user's marked processes whose supervisor is gone: the run's
    ops/heartbeat.json (under GRPO_OPS_RUN_DIR, else results/<run id>) names a pid that no longer runs.
    No heartbeat: unknown, not dead."""
    dead = set()
    marked = {run_key(p): p for p in table.values() if p.run_id and p.uid == uid}
    for key, p in marked.items():
        root = Path(p.run_dir) if p.run_dir else Path(results_dir) / p.run_id
        try:
            beat = json.loads((root / "ops" / "heartbeat.json").read_text())
            pid = int(beat["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid not in table:
            dead.add(key)
    return dead


def assess(table: Mapping[int, ProcInfo], target: RayTarget | None, uid: int, skip: set[int],
           drivers: Sequence[int] = (), dead: set[str] = frozenset()) -> list[Finding]:
    """Every classified process (and every process of a run whose supervisor died), with whether it is this
    user's leftover. Pure."""
    members = set(target.members) if target else set()
    findings = []
    for p in table.values():
        kind = p.kind or (RUN_PROCESS if p.run_id and run_key(p) in dead else None)
        if kind is None or p.pid in skip:
            continue
        mine = p.uid == uid
        orphan = ray_local.orphaned(table, p)
        if not mine:
            leftover, why = False, f"user {p.user}: reported only"
        elif p.run_id and run_key(p) in dead:
            leftover, why = True, f"grpo-ops run {p.run_id} has no live supervisor"
        elif orphan:
            leftover, why = True, "orphaned (its Ray cluster or parent is gone)"
        elif kind == procs.VLLM_WORKER and p.pid in members:
            if drivers:
                leftover, why = False, f"in use: driver pid {', '.join(map(str, drivers))} is attached"
            else:
                leftover, why = True, "in the cluster NeMo RL would attach to, with no driver attached"
        elif p.pid in members:
            leftover, why = False, "part of the cluster NeMo RL would attach to (see ray_cluster)"
        else:
            leftover, why = False, "part of another live Ray cluster"
        findings.append(Finding(p, kind, mine, leftover, why))
    return findings


def judge_stale(findings: Sequence[Finding]) -> CheckResult:
    """FAIL: own vLLM workers left over (they hold GPU memory); WARN: other own leftovers, or other users'
    vLLM workers / Gym servers on this node; PASS otherwise. Pure."""
    left = [f for f in findings if f.leftover]
    others = [f for f in findings if not f.mine]
    busy = [f for f in findings if f.mine and not f.leftover and f.kind == procs.VLLM_WORKER]
    counts: dict[str, int] = {}
    for f in findings:
        key = f"{f.kind}({'mine' if f.mine else 'other'})"
        counts[key] = counts.get(key, 0) + 1
    data = {"counts": counts, "processes": [
        {"pid": f.proc.pid, "user": f.proc.user, "kind": f.kind, "mine": f.mine, "leftover": f.leftover,
         "why": f.why, "cmdline": f.proc.cmd[:300]} for f in findings]}
    if left:
        status = Status.FAIL if any(f.kind in (procs.VLLM_WORKER, RUN_PROCESS) for f in left) else Status.WARN
        detail = f"{len(left)} leftover process(es) of yours: " + "; ".join(
            f"{procs.describe(f.proc, 80)} [{f.kind}, {f.why}]" for f in left[:5])
        return CheckResult("stale_processes", status, detail,
                           "ops preflight --fix (SIGTERM, then SIGKILL after "
                           f"{FIX_GRACE_S:g} s; --fix --dry-run shows what it would do)", data,
                           fix_id="stop_stale_processes")
    notes = []
    if busy:
        notes.append(f"{len(busy)} vLLM worker(s) of yours in use by a live run")
    other_gpu = [f for f in others if f.kind in (procs.VLLM_WORKER, procs.GYM_SERVER)]
    if other_gpu:
        notes.append(f"{len(other_gpu)} vLLM worker(s)/Gym server(s) of other users (not touched): " + "; ".join(
            procs.describe(f.proc, 60) for f in other_gpu[:3]))
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no vLLM, Ray or Gym processes"
    if notes:
        return CheckResult("stale_processes", Status.WARN, "; ".join(notes) + f" [{summary}]",
                           "wait for the other run to finish, or ask its owner", data)
    return CheckResult("stale_processes", Status.PASS, f"no leftovers [{summary}]", "", data)


def _observe(ctx: CheckContext) -> tuple[dict[int, ProcInfo], RayTarget | None, list[int]]:
    table = procs.snapshot()
    target = ray_local.find_target(ctx.env, table)
    return table, target, live_drivers(target, table)


def _assess(ctx: CheckContext) -> list[Finding]:
    table, target, drivers = _observe(ctx)
    return assess(table, target, ctx.uid, self_pids(table), drivers, dead_runs(table, ctx.results_dir, ctx.uid))


@register("stale_processes")
def check_stale_processes(ctx: CheckContext) -> CheckResult:
    return judge_stale(_assess(ctx))


@register_fix("stop_stale_processes")
def fix_stale_processes(ctx: CheckContext, dry_run: bool) -> list[str]:
    left = [f for f in _assess(ctx) if f.leftover]
    if not left:
        return ["no leftover processes of yours"]
    lines = [f"{'would stop' if dry_run else 'stopping'} {procs.describe(f.proc, 100)} [{f.why}]" for f in left]
    return lines + procs.terminate_pids([f.proc for f in left], grace_s=FIX_GRACE_S, dry_run=dry_run)


# --- ray_cluster ----------------------------------------------------------------------------------------
def judge_ray_cluster(target: RayTarget | None, table: Mapping[int, ProcInfo], uid: int,
                      drivers: Sequence[int], temp_dir: Path, ray_address: str | None) -> CheckResult:
    """Pure verdict on the cluster NeMo RL would attach to."""
    if target is None:
        where = f"RAY_ADDRESS unset, no {temp_dir}/ray_current_cluster"
        return CheckResult("ray_cluster", Status.PASS, f"no Ray cluster to attach to ({where}): NeMo RL "
                           "will start its own", "", {"target": None, "temp_dir": str(temp_dir)})
    data = {"address": target.address, "source": target.source, "session_dir": target.session_dir,
            "processes": len(target.members), "owner_uid": target.uid, "live_drivers": list(drivers)}
    if not target.is_running:
        if target.source == "RAY_ADDRESS" and "://" in target.address:
            return CheckResult("ray_cluster", Status.PASS, f"RAY_ADDRESS={target.address} (remote; not checked "
                               "from here)", "", data)
        if target.source == "RAY_ADDRESS":
            return CheckResult("ray_cluster", Status.FAIL, f"RAY_ADDRESS={ray_address} but no local Ray "
                               "cluster serves it", "unset RAY_ADDRESS or start that cluster", data)
        return CheckResult("ray_cluster", Status.PASS, f"{target.source} names {target.address}, which is not "
                           "running: NeMo RL will start its own cluster", "", data)
    workers = [table[p] for p in target.members if p in table and table[p].kind == procs.VLLM_WORKER]
    actors = [table[p] for p in target.members if p in table and table[p].kind == procs.RAY_WORKER
              and not table[p].cmd.startswith("ray::IDLE")]
    detail = (f"NeMo RL would attach to {target.address} (from {target.source}; session {target.session_dir}; "
              f"{len(target.members)} processes")
    detail += f"; drivers attached: pid {', '.join(map(str, drivers))})" if drivers else ")"
    if target.uid != uid:
        return CheckResult("ray_cluster", Status.WARN, detail + f", owned by uid {target.uid}",
                           "this is another user's cluster: set RAY_ADDRESS / RAY_TMPDIR to your own, "
                           "or unset them to let NeMo RL start one", data)
    if drivers:
        return CheckResult("ray_cluster", Status.WARN, detail + ": another run is using it",
                           "wait for that run, or point this one elsewhere (RAY_TMPDIR / RAY_ADDRESS)", data)
    if workers or actors:
        return CheckResult("ray_cluster", Status.WARN,
                           detail + f"; leftover actors: {len(workers)} vLLM worker(s), {len(actors)} other",
                           "ops preflight --fix stops this cluster by PID (not ray stop, which kills every Ray "
                           "process on the node)", data, fix_id="stop_ray_cluster")
    return CheckResult("ray_cluster", Status.PASS, detail, "", data)


@register("ray_cluster")
def check_ray_cluster(ctx: CheckContext) -> CheckResult:
    table, target, drivers = _observe(ctx)
    return judge_ray_cluster(target, table, ctx.uid, drivers, ray_local.ray_temp_dir(ctx.env),
                             ctx.env.get("RAY_ADDRESS"))


@register_fix("stop_ray_cluster")
def fix_ray_cluster(ctx: CheckContext, dry_run: bool) -> list[str]:
    table, target, drivers = _observe(ctx)
    if target is None or not target.is_running:
        return ["no Ray cluster to stop"]
    if target.uid != ctx.uid or drivers:
        return [f"not stopping {target.address}: " + ("another user's cluster" if target.uid != ctx.uid
                                                      else f"driver pid {drivers} is attached")]
    own = set(self_pids(table))
    victims = [table[p] for p in target.members if p in table and p not in own]
    head = f"{'would stop' if dry_run else 'stopping'} Ray cluster {target.address} ({target.session_dir}): " \
           f"{len(victims)} processes by PID"
    lines = [head] + procs.terminate_pids(victims, grace_s=FIX_GRACE_S, dry_run=dry_run)
    if not dry_run:
        ray_local.forget_address(target)
    return lines
