"""Goodput of a supervised run: productive step time over wall time, and where the rest went. Pure.

After Google's definition of ML goodput (cloud.google.com/blog/products/ai-machine-learning/goodput-metric-
as-measure-of-ml-productivity; ml-goodput-measurement's BadputType): only the time spent on training steps
whose result survived counts. Lost ("badput") time is split into
  preflight     run start to the first launch (checks, clean-up of leftovers);
  startup       each launch to its first step (model load, Ray, vLLM; the whole attempt if it never stepped);
  recomputed    step time of steps redone because they were past the last checkpoint when an attempt died
                (WASTED_PROGRESS_FROM_DISRUPTION);
  hang_detect   from a hung attempt's last step to its kill (the step deadline, stack dumps);
  cleanup       killing and clearing leftovers between attempts (INFRASTRUCTURE_RECOVERY_FROM_DISRUPTION);
  other         the rest: checkpoint saves, validation, crash tails, supervisor overhead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

BUCKETS = ("preflight", "startup", "recomputed", "hang_detect", "cleanup", "other")


@dataclass(frozen=True)
class StepTime:
    attempt: int
    step: int
    seconds: float


@dataclass(frozen=True)
class Goodput:
    wall_s: float
    productive_s: float
    lost_s: Mapping[str, float] = field(default_factory=dict)
    steps_kept: int = 0
    steps_recomputed: int = 0

    @property
    def ratio(self) -> float | None:
        return self.productive_s / self.wall_s if self.wall_s > 0 else None

    def to_json(self) -> dict:
        return {"wall_s": self.wall_s, "productive_s": self.productive_s, "goodput": self.ratio,
                "lost_s": dict(self.lost_s), "steps_kept": self.steps_kept,
                "steps_recomputed": self.steps_recomputed}


def step_times(records: Iterable[Mapping], metric_rows: Iterable[Mapping] = ()) -> list[StepTime]:
    """Per-(attempt, step) step time: the trainer's metrics where present, else the journal's progress."""
    out: dict[tuple[int, int], float] = {}
    for r in records:
        if r.get("kind") == "progress" and _num(r.get("step_time_s")) is not None and r.get("step") is not None:
            out[(int(r.get("attempt", 0)), int(r["step"]))] = float(r["step_time_s"])
    for row in metric_rows:
        t = _num(row.get("timing/train/total_step_time"))
        if t is not None and row.get("step") is not None:
            out[(int(row.get("_attempt", 0)), int(row["step"]))] = t
    return [StepTime(a, s, t) for (a, s), t in sorted(out.items())]


def compute(records: Sequence[Mapping], steps: Sequence[StepTime]) -> Goodput:
    """Goodput from the journal records of one run and its per-step times."""
    by_kind: dict[str, list[Mapping]] = {}
    for r in records:
        by_kind.setdefault(str(r.get("kind")), []).append(r)
    wall = _wall_s(records, by_kind)
    starts = {int(r["attempt"]): r for r in by_kind.get("attempt_start", [])}
    ends = {int(r["attempt"]): r for r in by_kind.get("attempt_end", [])}
    kept_until = _kept_until(sorted(starts), starts)

    productive = recomputed = 0.0
    n_kept = n_lost = 0
    for st in steps:
        limit = kept_until.get(st.attempt)
        if limit is None or st.step <= limit:
            productive += st.seconds
            n_kept += 1
        else:
            recomputed += st.seconds
            n_lost += 1

    lost = dict.fromkeys(BUCKETS, 0.0)
    lost["recomputed"] = recomputed
    lost["preflight"] = _preflight_s(records, by_kind)
    lost["cleanup"] = sum(_num(r.get("duration_s")) or 0.0 for r in by_kind.get("cleanup", []))
    last_progress = _last_progress_mono(by_kind.get("progress", []))
    for attempt, end in ends.items():
        startup = _num(end.get("startup_s"))
        lost["startup"] += startup if startup is not None else (_num(end.get("duration_s")) or 0.0)
        failure = end.get("failure") or {}
        if is_hang(failure) and startup is not None and attempt in last_progress:
            end_mono = _num(end.get("mono"))
            if end_mono is not None:
                lost["hang_detect"] += max(0.0, end_mono - last_progress[attempt])
    accounted = productive + sum(lost.values())
    lost["other"] = max(0.0, wall - accounted)
    return Goodput(wall, productive, lost, n_kept, n_lost)


def is_hang(failure: Mapping) -> bool:
    """The supervisor's family "hang" (contracts.md), or a kind naming a hang."""
    return failure.get("family") == "hang" or "hang" in str(failure.get("kind") or "").lower()


def _kept_until(attempts: list[int], starts: Mapping[int, Mapping]) -> dict[int, int | None]:
    """Per attempt, the last step whose work survived: the next attempt resumed from it (None = all kept)."""
    out: dict[int, int | None] = {}
    for i, a in enumerate(attempts):
        if i + 1 < len(attempts):
            resume = starts[attempts[i + 1]].get("resume_from_step")
            out[a] = int(resume) if resume is not None else 0
        else:
            out[a] = None
    return out


def _wall_s(records: Sequence[Mapping], by_kind: Mapping[str, list[Mapping]]) -> float:
    for r in by_kind.get("run_end", []):
        if _num(r.get("wall_s")) is not None:
            return float(r["wall_s"])
    monos = [m for r in records if (m := _num(r.get("mono"))) is not None]
    return max(monos) - min(monos) if monos else 0.0


def _preflight_s(records: Sequence[Mapping], by_kind: Mapping[str, list[Mapping]]) -> float:
    first = next((_num(r.get("mono")) for r in records if r.get("kind") == "run_start"), None)
    launch = next((_num(r.get("mono")) for r in by_kind.get("attempt_start", [])), None)
    return max(0.0, launch - first) if first is not None and launch is not None else 0.0


def _last_progress_mono(progress: Iterable[Mapping]) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in progress:
        m = _num(r.get("mono"))
        if m is not None:
            a = int(r.get("attempt", 0))
            out[a] = max(out.get(a, m), m)
    return out


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
