"""The morning report's content: verdict, success criteria, attempt timeline, series, goodput. Pure.

`build_report(run, now)` turns a `RunData` (ops.rundata) into a `Report` value; `render_markdown` turns
that into the terminal / Markdown summary. The HTML page (ops.report_html) and the plots (ops.plots)
render the same value. No I/O here; every text a user typed or a process printed passes `redact`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ops import goodput as gp
from ops.logs import redact
from ops.rundata import RunData
from ops.trend import mann_kendall

PASS, FAIL, WARN, UNKNOWN = "PASS", "FAIL", "WARN", "UNKNOWN"
HEARTBEAT_STALE_S = 30.0
REWARD_KEYS = ("train/reward", "reward")
ACCURACY_KEYS = ("validation/accuracy", "val:accuracy", "accuracy")
STEP_TIME_KEYS = ("timing/train/total_step_time", "step_time_s")
MEMORY_KEYS = ("memory/peak_mib", "memory/gpu_peak_mib", "rss_mib")


@dataclass(frozen=True)
class Criterion:
    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class AttemptView:
    attempt: int
    started: str | None
    overrides: tuple[str, ...]
    resume_from_step: int | None
    first_step: int | None
    last_step: int | None
    outcome: str                     # "succeeded" | failure kind | "running" | "unknown"
    family: str | None               # the failure's family: oom | hang | crash | config (None on success)
    summary: str
    exit: dict
    numbers: dict
    evidence_lines: tuple[str, ...]
    stack_dumps: tuple[str, ...]
    duration_s: float | None
    startup_s: float | None
    peak_rss_mib: float | None
    peak_gpu_mib: float | None
    decision: dict | None


@dataclass(frozen=True)
class Report:
    run_id: str
    root: str
    trainer: str
    verdict: str                      # the terminal state, RUNNING, or SUPERVISOR_LOST
    verdict_line: str
    steps_done: int | None
    total_steps: int | None
    wall_s: float | None
    criteria: tuple[Criterion, ...]
    attempts: tuple[AttemptView, ...]
    goodput: dict
    best_checkpoints: tuple[dict, ...]
    evals: tuple[dict, ...]
    series: dict = field(default_factory=dict)     # name -> {attempt: [[step, value], ...]}
    boundaries: tuple[tuple[int, float], ...] = ()  # (attempt, x where it began)
    warnings: tuple[str, ...] = ()
    preflight: dict | None = None                   # {ok, lines} when the run's preflight ran

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.verdict == "SUCCEEDED" and all(c.status != FAIL for c in self.criteria)


def build_report(run: RunData, now: float) -> Report:
    recs = run.records
    first = next((r for r in recs if r.get("kind") == "run_start"), {})
    end = next((r for r in reversed(recs) if r.get("kind") == "run_end"), None)
    attempts = tuple(_attempt_views(recs))
    series = _series(run)
    kept = {name: _kept_lineage(per) for name, per in series.items()}
    g = gp.compute(recs, gp.step_times(recs, run.metrics))
    steps_done = end.get("steps_done") if end else _last_step(recs, run.state)
    total = (end or {}).get("total_steps") or first.get("total_steps") or run.settings.max_num_steps
    verdict, line = _verdict(run, end, attempts, steps_done, total, now)
    best = _best_checkpoints(run)
    criteria = (_reward_criterion(kept.get("reward", [])), _accuracy_criterion(kept.get("accuracy", [])),
                _oom_criterion(attempts), _checkpoint_criterion(run, steps_done), _top_k_criterion(run, best))
    warnings = [f"{run.bad_lines} journal line(s) were not valid JSON and were skipped"] if run.bad_lines else []
    warnings += [redact(f"attempt {r.get('attempt')}: {r['message']}") for r in recs
                 if r.get("kind") == "warning" and r.get("message")]
    pre = next((r for r in recs if r.get("kind") in ("eval", "warning") and r.get("what") == "preflight"), None)
    return Report(
        run_id=str(first.get("run_id") or (run.state or {}).get("run_id") or run.paths.root.name),
        root=str(run.paths.root), trainer=str(first.get("trainer") or (run.state or {}).get("trainer") or "?"),
        verdict=verdict, verdict_line=redact(line), steps_done=steps_done, total_steps=total,
        wall_s=(end or {}).get("wall_s", g.wall_s), criteria=criteria, attempts=attempts, goodput=g.to_json(),
        best_checkpoints=tuple(best), evals=tuple(_evals(run.evals)), series=series,
        boundaries=tuple((a.attempt, (a.resume_from_step or 0) + 0.5) for a in attempts), warnings=tuple(warnings),
        preflight={"ok": bool(pre.get("ok")), "lines": [redact(str(x)) for x in pre.get("lines") or ()]} if pre else None)


def _attempt_views(recs) -> list[AttemptView]:
    out = []
    starts = [r for r in recs if r.get("kind") == "attempt_start"]
    for s in starts:
        n = s.get("attempt")
        end = next((r for r in recs if r.get("kind") == "attempt_end" and r.get("attempt") == n), None)
        dec = next((r for r in recs if r.get("kind") == "decision" and r.get("attempt") == n), None)
        steps = [r["step"] for r in recs if r.get("kind") == "progress" and r.get("attempt") == n and "step" in r]
        failure = (end or {}).get("failure") or {}
        if end is None:
            outcome, summary = "running", "no attempt_end recorded (still running, or the supervisor died)"
        elif not failure:
            outcome, summary = "succeeded", (end.get("exit") or {}).get("detail") or "exited 0"
        else:
            outcome, summary = str(failure.get("kind", "unknown")), str(failure.get("summary", ""))
        plan = s.get("plan") or {}
        out.append(AttemptView(
            attempt=n, started=s.get("ts"), overrides=tuple(redact(o) for o in plan.get("overrides", ())),
            family=failure.get("family") or (_family_guess(outcome) if failure else None),
            resume_from_step=s.get("resume_from_step"), first_step=min(steps) if steps else None,
            last_step=(end or {}).get("last_step", max(steps) if steps else None), outcome=outcome,
            summary=redact(summary), exit=(end or {}).get("exit") or {}, numbers=failure.get("numbers") or {},
            evidence_lines=tuple(redact(str(x)) for x in failure.get("evidence_lines") or ()),
            stack_dumps=tuple((end or {}).get("stack_dumps") or ()), duration_s=(end or {}).get("duration_s"),
            startup_s=(end or {}).get("startup_s"), peak_rss_mib=(end or {}).get("peak_rss_mib"),
            peak_gpu_mib=(end or {}).get("peak_gpu_mib"),
            decision={k: dec.get(k) for k in ("action", "reason", "remedy", "plan_diff", "experiment_changed")}
            if dec else None))
    return out


def _family_guess(kind: str) -> str:
    low = kind.lower()
    return "oom" if "oom" in low else ("hang" if "hang" in low else "crash")


def _series(run: RunData) -> dict[str, dict[int, list[list[float]]]]:
    """name -> attempt -> [[step, value]]: the trainer's metrics first, the journal's progress as fallback."""
    out: dict[str, dict[int, dict[int, float]]] = {k: {} for k in ("reward", "accuracy", "step_time", "memory")}
    keys = {"reward": REWARD_KEYS, "accuracy": ACCURACY_KEYS, "step_time": STEP_TIME_KEYS, "memory": MEMORY_KEYS}
    evals = [r for r in run.records if r.get("kind") == "eval" and _is_num(r.get("accuracy"))]
    # A progress record repeats the last validation accuracy at every step; validation's own records don't.
    progress = [{k: v for k, v in r.items() if not (evals and k == "accuracy")}
                for r in run.records if r.get("kind") == "progress"]
    sources = [(r.get("attempt", 0), r) for r in progress + evals]
    sources += [(r.get("_attempt", 0), r) for r in run.metrics]     # later sources win
    for attempt, row in sources:
        if row.get("step") is None:
            continue
        for name, names in keys.items():
            v = next((row[k] for k in names if _is_num(row.get(k))), None)
            if v is not None:
                out[name].setdefault(int(attempt), {})[int(row["step"])] = float(v)
    return {name: {a: sorted([s, v] for s, v in pts.items()) for a, pts in sorted(per.items())}
            for name, per in out.items()}


def _kept_lineage(per_attempt: dict[int, list[list[float]]]) -> list[tuple[int, float]]:
    """One value per step, from the latest attempt that ran it (its result is the one that survived)."""
    merged: dict[int, float] = {}
    for attempt in sorted(per_attempt):
        for step, value in per_attempt[attempt]:
            merged[int(step)] = value
    return sorted(merged.items())


def _verdict(run, end, attempts, steps_done, total, now) -> tuple[str, str]:
    n = len(attempts)
    recovered = [a for a in attempts[:-1] if a.outcome not in ("succeeded", "running")]
    prog = f"{steps_done if steps_done is not None else '?'}/{total or '?'} steps, {n} attempt{'s' * (n != 1)}"
    if end:
        state = str(end.get("state"))
        extra = f", recovered from {', '.join(a.outcome for a in recovered)}" if recovered and state == "SUCCEEDED" else ""
        return state, f"{state}: {prog}{extra}. {end.get('reason', '')}".strip()
    hb = run.heartbeat or {}
    age = now - float(hb["ts"]) if _is_num(hb.get("ts")) else None
    if age is not None and age <= HEARTBEAT_STALE_S:
        return "RUNNING", f"RUNNING ({hb.get('state', '?')}): {prog} so far"
    why = f"heartbeat {age:.0f} s old" if age is not None else "no heartbeat"
    return "SUPERVISOR_LOST", f"SUPERVISOR_LOST: no run_end and {why}; {prog} recorded"


def _reward_criterion(points) -> Criterion:
    name = "reward mean rises over the steps"
    t = mann_kendall([v for _, v in points], xs=[s for s, _ in points])
    if t.direction == "too short":
        return Criterion(name, UNKNOWN, t.describe())
    first, last = points[0][1], points[-1][1]
    detail = f"{t.describe()}; {first:.3g} at step {points[0][0]} -> {last:.3g} at step {points[-1][0]}"
    return Criterion(name, {"rising": PASS, "falling": FAIL}.get(t.direction, WARN), detail)


def _accuracy_criterion(points) -> Criterion:
    name = "validation accuracy improves"
    if len(points) < 2:
        return Criterion(name, UNKNOWN, f"{len(points)} validation point(s): need 2 (check grpo.val_period)")
    (s0, a0), (s1, a1) = points[0], points[-1]
    detail = f"{a0:.3g} at step {s0} -> {a1:.3g} at step {s1} ({a1 - a0:+.3g})"
    t = mann_kendall([v for _, v in points], xs=[s for s, _ in points])
    if t.direction != "too short":
        detail += f"; trend {t.describe()}"
    if a1 > a0 and t.direction != "falling":
        return Criterion(name, PASS, detail)
    return Criterion(name, FAIL if a1 < a0 else WARN, detail)


def _oom_criterion(attempts) -> Criterion:
    name = "no OOM in the final attempt"
    if not attempts:
        return Criterion(name, UNKNOWN, "no attempt was launched")
    last = attempts[-1]
    earlier = [f"attempt {a.attempt}: {a.outcome}" for a in attempts[:-1] if a.family == "oom"]
    mem = f"peak RSS {_fmt(last.peak_rss_mib)} MiB, GPU {_fmt(last.peak_gpu_mib)} MiB"
    note = f" (earlier: {'; '.join(earlier)})" if earlier else ""
    if last.outcome == "running":
        return Criterion(name, UNKNOWN, f"attempt {last.attempt} still running{note}")
    if last.family == "oom" or last.exit.get("oom_killed"):
        return Criterion(name, FAIL, f"attempt {last.attempt} ended {last.outcome}: {last.summary}; {mem}")
    return Criterion(name, PASS, f"attempt {last.attempt} ended {last.outcome}; {mem}{note}")


def _checkpoint_criterion(run: RunData, steps_done) -> Criterion:
    name = "checkpoints saved at the configured interval"
    period = run.settings.save_period
    if not period or steps_done is None:
        return Criterion(name, UNKNOWN, f"save_period={period}, steps done={steps_done} (config: {run.settings.source})")
    seen = set(run.logged_saves) | {c.step for c in run.checkpoints}
    expected = [s for s in range(period, int(steps_done) + 1, period)]
    missing = [s for s in expected if s not in seen]
    detail = f"every {period} steps: expected {expected or 'none yet'}, saved {sorted(seen) or 'none'}"
    return Criterion(name, FAIL if missing else PASS, detail + (f"; missing {missing}" if missing else ""))


def _best_checkpoints(run: RunData) -> list[dict]:
    scored = [c for c in run.checkpoints if c.accuracy is not None]
    scored.sort(key=lambda c: (c.accuracy, c.step), reverse=run.settings.higher_is_better)
    k = run.settings.keep_top_k or len(scored)
    return [{"step": c.step, "accuracy": c.accuracy, "path": str(c.path)} for c in scored[:k]]


def _top_k_criterion(run: RunData, best: list[dict]) -> Criterion:
    k = run.settings.keep_top_k
    name = f"best keep_top_k={k if k is not None else '?'} checkpoints kept"
    if not run.checkpoints:
        return Criterion(name, UNKNOWN if k is None else WARN, "no step_N checkpoint directories found")
    listing = ", ".join(f"step {b['step']} ({b['accuracy']:.3g})" for b in best) or "none with a metric"
    unscored = [c.step for c in run.checkpoints if c.accuracy is None]
    detail = listing + (f"; without {run.settings.metric_name or 'metric'}: steps {unscored}" if unscored else "")
    return Criterion(name, PASS if best else WARN, detail)


def _evals(evals) -> list[dict]:
    return [{k: (redact(v) if isinstance(v, str) else v) for k, v in e.items()
             if k in ("which", "model", "score", "ok", "error", "duration_s", "exit_code", "step")} for e in evals]


def eval_delta(evals) -> float | None:
    scores = {e.get("which"): e.get("score") for e in evals if _is_num(e.get("score"))}
    return scores["trained"] - scores["base"] if {"base", "trained"} <= scores.keys() else None


def _last_step(recs, state) -> int | None:
    steps = [r["step"] for r in recs if r.get("kind") == "progress" and _is_num(r.get("step"))]
    return max(steps) if steps else (state or {}).get("step")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v) -> str:
    return f"{v:.0f}" if _is_num(v) else "n/a"


def fmt_s(v) -> str:
    if not _is_num(v):
        return "n/a"
    v = float(v)
    return f"{v:.1f} s" if v < 120 else (f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.2f} h")


def render_markdown(r: Report, html_path: Path | None = None) -> str:
    lines = [f"# grpo-ops report: {r.run_id}", "", f"**{r.verdict_line}**", ""]
    if r.preflight is not None:
        lines += [f"Preflight: {'passed' if r.preflight['ok'] else 'FAILED'}"
                  + "".join(f"\n- {x}" for x in r.preflight["lines"]), ""]
    lines += ["## Success criteria", "", "| criterion | status | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {c.status} | {c.detail} |" for c in r.criteria]
    g = r.goodput
    ratio = f"{g['goodput']:.1%}" if g.get("goodput") is not None else "n/a"
    lost = ", ".join(f"{k} {fmt_s(v)}" for k, v in g["lost_s"].items() if v)
    lines += ["", "## Goodput", "", f"{ratio} (productive {fmt_s(g['productive_s'])} of wall {fmt_s(g['wall_s'])});"
              f" lost: {lost or 'nothing'}", "", "## Attempts", ""]
    for a in r.attempts:
        steps = f"steps {a.first_step}-{a.last_step}" if a.first_step is not None else "no step"
        lines.append(f"- attempt {a.attempt} ({steps}, resumed from {a.resume_from_step}): **{a.outcome}**"
                     f" {a.summary}; exit {exit_text(a.exit)}")
        if a.numbers:
            lines.append(f"  - numbers: {', '.join(f'{k}={v}' for k, v in a.numbers.items())}")
        lines += [f"  - stack dump: {p}" for p in a.stack_dumps]
        if a.decision:
            diff = ", ".join(f"{k}: {o} -> {n}" for k, (o, n) in (a.decision.get("plan_diff") or {}).items())
            lines.append(f"  - decision: {a.decision.get('action')} ({a.decision.get('reason')})"
                         + (f"; plan diff {diff}" if diff else ""))
    if r.evals:
        lines += ["", "## Evaluation", ""]
        lines += [f"- {e.get('which')}: score {e.get('score')}" + (f" (error: {e['error']})" if e.get("error") else "")
                  for e in r.evals]
        d = eval_delta(r.evals)
        if d is not None:
            lines.append(f"- difference (trained - base): {d:+.4g}")
    lines += [f"- warning: {w}" for w in r.warnings]
    if html_path:
        lines += ["", f"HTML report: {html_path}"]
    return "\n".join(lines) + "\n"


def exit_text(exit: dict) -> str:
    if not exit:
        return "n/a"
    if exit.get("signal"):
        return f"signal {exit['signal']}" + (" (OOM-killed)" if exit.get("oom_killed") else "")
    return f"code {exit.get('code')}" + (" (OOM-killed)" if exit.get("oom_killed") else "")
