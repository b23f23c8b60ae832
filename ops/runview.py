"""What `ops status`, `ops logs`, `ops diagnose` and `ops clean` show, built from a run's files. Collecting
(reads files) is separate from rendering (pure text).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ops.classify import Evidence, classify
from ops.journal import read_journal, read_json
from ops.remedies import GiveUp, PastAttempt, PlanContext, next_plan
from ops.runs import is_supervised
from ops.watch import ATTEMPT_MARK, parse_line
from training.spec import Plan, RunPaths

HEARTBEAT_STALE_S = 10.0


def collect_status(exp: str, paths: RunPaths, now: float | None = None) -> dict:
    """state.json + heartbeat + the last failure from the journal, as one dict (--json prints it)."""
    now = time.time() if now is None else now
    state = read_json(paths.state_file) or {"run_id": exp, "state": "UNKNOWN"}
    beat = read_json(paths.heartbeat)
    alive = is_supervised(paths)
    records = read_journal(paths.journal)
    failures = [r for r in records if r["kind"] == "attempt_end" and r.get("failure")]
    decisions = [r for r in records if r["kind"] == "decision"]
    out = {**state, "exp": exp, "supervisor_alive": alive,
           "heartbeat_age_s": round(now - beat["ts"], 1) if beat else None,
           "last_failure": failures[-1]["failure"] if failures else None,
           "last_decision": {k: decisions[-1].get(k) for k in ("action", "reason", "remedy")} if decisions else None,
           "output_log": str(paths.output_log)}
    terminal = state.get("state") in ("SUCCEEDED", "CANCELLED") or str(state.get("state", "")).startswith("FAILED")
    out["stale"] = not alive and not terminal
    return out


def _fmt(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def render_status(s: Mapping[str, Any]) -> str:
    lines = [f"experiment  {s['exp']}", f"state       {s.get('state')}  (attempt {s.get('attempt', 0)}, trainer "
             f"{s.get('trainer', '?')})"]
    step = f"{_fmt(s.get('step'))}/{_fmt(s.get('total_steps'))}"
    lines.append(f"step        {step}  reward {_fmt(s.get('reward'), '.4f')}  accuracy "
                 f"{_fmt(s.get('accuracy'), '.4f')}  step time {_fmt(s.get('step_time_s'), '.2f')}s  ETA "
                 f"{_fmt(s.get('eta_s'), '.0f')}s")
    if s.get("supervisor_alive"):
        lines.append(f"supervisor  pid {s.get('supervisor_pid')} alive, heartbeat {_fmt(s.get('heartbeat_age_s'))}s ago")
    elif s.get("stale"):
        lines.append(f"supervisor  NOT RUNNING (last heartbeat {_fmt(s.get('heartbeat_age_s'))}s ago): continue "
                     f"with `ops run --resume {s['exp']}`")
    if s.get("last_failure"):
        f = s["last_failure"]
        lines.append(f"last failure {f['kind']} in {f.get('phase') or '?'}: {f['summary']}")
    if s.get("last_decision"):
        d = s["last_decision"]
        lines.append(f"decision    {d['action']}: {d['reason']}")
    if s.get("reason") and s.get("state") not in ("RUNNING", "LAUNCHING"):
        lines.append(f"reason      {s['reason']}")
    return "\n".join(lines)


def last_attempt_lines(text: str) -> list[str]:
    lines = text.splitlines()
    marks = [i for i, ln in enumerate(lines) if ln.startswith(ATTEMPT_MARK)]
    return lines[marks[-1] + 1:] if marks else lines


def diagnose(lines: Sequence[str], spec: Any = None, plan: Plan | None = None) -> dict:
    """The failure in a log (no exit status known) and what the planner would do about it."""
    sigs = tuple(getattr(spec, "signatures", ()) or ())
    failure = classify(Evidence(lines=tuple(lines), exit=None), sigs)
    last_step, model = None, None
    for line in lines:
        ev = parse_line(line)
        if ev and ev.kind == "step":
            last_step = ev.value
        elif ev and ev.kind == "memory_model":
            model = ev.value
    out: dict = {"failure": failure.to_json() if failure else None, "last_step": last_step, "remedy": None}
    if failure is None or "no failure text" in failure.summary:
        out["failure"] = None
        return out
    if spec is None or plan is None:
        return out
    try:
        cfg = spec.resolve(plan)
        knobs = spec.knobs_for(cfg) if hasattr(spec, "knobs_for") else spec.knobs
        ctx = PlanContext(tuple(knobs), cfg, lambda c: spec.constraint_violations(c, None), model)
        d = next_plan(failure, plan, [PastAttempt(plan, failure.kind, last_step)], ctx)
    except Exception as err:   # a diagnosis without a plan still names the failure
        out["remedy"] = {"action": "unknown", "reason": f"cannot resolve the config: {err}"}
        return out
    if isinstance(d, GiveUp):
        out["remedy"] = {"action": "give_up", "reason": d.reason, "state": d.state.value}
    else:
        out["remedy"] = {"action": "relaunch", "remedy": d.remedy, "reason": d.reason,
                         "plan_diff": {k: list(v) for k, v in d.plan_diff.items()},
                         "experiment_changed": d.experiment_changed, "overrides": list(d.plan.overrides)}
    return out


def render_diagnosis(d: Mapping[str, Any], source: str) -> str:
    f = d["failure"]
    if f is None:
        return f"{source}: no failure found (last step {_fmt(d['last_step'])})"
    lines = [f"{source}: {f['kind']} ({f['family']}{', deterministic' if f['deterministic'] else ''}) in phase "
             f"{f.get('phase') or '?'}", f"  {f['summary']}"]
    if f["numbers"]:
        lines.append("  numbers: " + ", ".join(f"{k}={v}" for k, v in f["numbers"].items()))
    lines += [f"  | {ln[:200]}" for ln in f["evidence_lines"]]
    r = d.get("remedy")
    if r:
        lines.append(f"remedy: {r['action']}" + (f" [{r['remedy']}]" if r.get("remedy") else "") + f": {r['reason']}")
        for k, (old, new) in (r.get("plan_diff") or {}).items():
            lines.append(f"  {k}: {old} -> {new}")
    return "\n".join(lines)


def follow(path: Path, paths: RunPaths, out, poll_s: float = 0.5, from_start: bool = True) -> None:
    """Print `path` and what is appended to it until the run is over (supervisor gone) or Ctrl-C."""
    offset = 0 if from_start else (path.stat().st_size if path.exists() else 0)
    while True:
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            if data:
                offset += len(data)
                out.write(data.decode("utf-8", "replace"))
                out.flush()
        state = (read_json(paths.state_file) or {}).get("state", "")
        if not is_supervised(paths) and (state in ("SUCCEEDED", "CANCELLED") or state.startswith("FAILED")):
            return
        time.sleep(poll_s)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
