"""`ops status --watch`: a live terminal view of a run, with a progress bar over the steps.

`render(view)` is pure (a rich renderable from a `LiveView` value); `collect(paths, now)` reads state.json,
heartbeat.json, the journal's tail and the supervisor lock; `watch(paths)` is the loop that owns the
terminal (rich.live.Live), refreshing until the run reaches a terminal state or its supervisor is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ops.report import fmt_s
from ops.rundata import read_json, read_jsonl
from ops.runs import is_supervised
from training.spec import RunPaths

TERMINAL_OK = "SUCCEEDED"
STALE_S = 15.0
_COLOURS = {"SUCCEEDED": "bold green", "RUNNING": "bold cyan", "LAUNCHING": "cyan", "PREFLIGHT": "cyan",
            "RECOVERING": "bold yellow", "CANCELLED": "bold magenta"}


@dataclass(frozen=True)
class LiveView:
    run_id: str
    state: dict
    heartbeat_age_s: float | None
    supervised: bool
    events: tuple[str, ...] = field(default_factory=tuple)

    @property
    def state_name(self) -> str:
        return str(self.state.get("state") or "UNKNOWN")

    @property
    def is_terminal(self) -> bool:
        name = self.state_name
        return name in ("SUCCEEDED", "CANCELLED") or name.startswith("FAILED")

    @property
    def is_lost(self) -> bool:
        """No live supervisor, no terminal state, and a heartbeat that stopped (or never came)."""
        stale = self.heartbeat_age_s is None or self.heartbeat_age_s > STALE_S
        return not self.supervised and not self.is_terminal and stale


def collect(paths: RunPaths, now: float, run_id: str | None = None, n_events: int = 6) -> LiveView:
    state = read_json(paths.state_file) or {}
    beat = read_json(paths.heartbeat) or {}
    age = now - float(beat["ts"]) if isinstance(beat.get("ts"), (int, float)) else None
    records, _ = read_jsonl(paths.journal)
    events = tuple(e for e in (describe_record(r) for r in records) if e)[-n_events:]
    return LiveView(run_id or str(state.get("run_id") or paths.root.name), state, age, is_supervised(paths), events)


def describe_record(r: dict) -> str | None:
    """One line for the events panel, or None for records too frequent to show (progress)."""
    kind, ts = r.get("kind"), str(r.get("ts", ""))[11:19]
    if kind == "transition":
        return f"{ts} {r.get('from') or 'start'} -> {r.get('to')}: {r.get('reason', '')}"
    if kind == "attempt_start":
        return f"{ts} attempt {r.get('attempt')} launched (resume from {r.get('resume_from_step')})"
    if kind == "attempt_end":
        f = r.get("failure")
        how = f"{f.get('kind')}: {f.get('summary', '')}" if f else "exited cleanly"
        return f"{ts} attempt {r.get('attempt')} ended at step {r.get('last_step')}: {how}"
    if kind == "decision":
        diff = ", ".join(f"{k} {o}->{n}" for k, (o, n) in (r.get("plan_diff") or {}).items())
        return f"{ts} decision {r.get('action')}: {r.get('reason', '')}" + (f" [{diff}]" if diff else "")
    if kind == "run_end":
        return f"{ts} run ended {r.get('state')}: {r.get('reason', '')}"
    return None


def render(view: LiveView, width: int = 50) -> Group:
    s = view.state
    step, total = s.get("step") or 0, s.get("total_steps")
    colour = "bold red" if view.state_name.startswith("FAILED") or view.is_lost else _COLOURS.get(view.state_name, "")
    title = Text.assemble(("grpo-ops ", "bold"), (view.run_id, "bold"), "  ", (view.state_name, colour),
                          f"  attempt {s.get('attempt', '?')}")
    bar_line = Table.grid(padding=(0, 1))
    if total:
        pct = 100.0 * step / total
        bar_line.add_row(ProgressBar(total=float(total), completed=float(step), width=width),
                         Text(f"step {step}/{total} ({pct:.0f}%)"), Text(f"ETA {fmt_s(s.get('eta_s'))}"))
    else:
        bar_line.add_row(Text(f"step {step}/? (total steps unknown yet)"))
    facts = Table.grid(padding=(0, 2))
    facts.add_row("reward", _num(s.get("reward")), "accuracy", _num(s.get("accuracy")),
                  "step time", fmt_s(s.get("step_time_s")))
    failures = ", ".join(f"{k} x{v}" for k, v in (s.get("failures") or {}).items()) or "none"
    beat = "none" if view.heartbeat_age_s is None else f"{view.heartbeat_age_s:.0f} s ago"
    facts.add_row("phase", str(s.get("phase") or "-"), "failures", failures, "heartbeat", beat)
    parts = [title, bar_line, facts]
    if view.is_lost:
        parts.append(Text(f"supervisor not running (heartbeat {beat}): resume with `ops run --resume {view.run_id}`",
                          style="bold red"))
    if view.events:
        parts.append(Panel("\n".join(view.events), title="recent events", title_align="left", expand=True))
    return Group(*parts)


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def watch(paths: RunPaths, run_id: str | None = None, interval_s: float = 1.0, console: Console | None = None,
          clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
          max_s: float | None = None) -> int:
    """Show the live view until the run ends (0 if it SUCCEEDED, else 1) or its supervisor is lost (1).

    Ctrl-C stops watching only (the run goes on): 0."""
    console = console or Console()
    start = clock()
    view = collect(paths, clock(), run_id)
    try:
        with Live(render(view), console=console, auto_refresh=False, transient=False) as live:
            while True:
                view = collect(paths, clock(), run_id)
                live.update(render(view), refresh=True)
                if view.is_terminal or view.is_lost:
                    break
                if max_s is not None and clock() - start > max_s:
                    return 0
                sleep(interval_s)
    except KeyboardInterrupt:
        return 0
    return 0 if view.state_name == TERMINAL_OK else 1
