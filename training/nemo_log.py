"""What NeMo RL's own output says beyond failures: the driver's host memory per stage. Pure; no I/O.

NeMo RL's `MemoryTracker` prints, at the start of each stage, a block about the stage that just ended:
```
💭 Driver CPU memory tracker for Generation:
- Mem usage before                    10.21 GB
- Mem usage after                     11.02 GB
- Mem usage diff (after - before)     +0.81 GB
- New variables: [...]
```
(nemo_rl/utils/memory_tracker.py). `memory_points(lines)` reads those blocks; `host_memory_growth(lines)` says
when the driver's RSS after the same stage has grown step over step, so the supervisor can journal a warning
before the host OOM killer acts. The supervisor calls it on the attempt's log lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_HEADER = re.compile(r"Driver CPU memory tracker for (?P<stage>.+?):\s*$")
_AFTER = re.compile(r"-\s*Mem usage after\s+(?P<gb>-?[\d.]+)\s*GB")
_STEP = re.compile(r"={5,} Step (\d+)/(\d+) ={5,}")


@dataclass(frozen=True)
class MemoryPoint:
    stage: str
    after_gb: float
    step: int | None        # the last Step banner seen before the block (None before the first)


@dataclass(frozen=True)
class HostMemoryGrowth:
    """A warning: `stage`'s RSS rose in each of the last `len(series) - 1` occurrences."""
    stage: str
    series_gb: tuple[float, ...]
    steps: tuple[int | None, ...]
    growth_gb: float
    per_step_gb: float
    steps_to_limit: int | None      # at this rate, occurrences until `limit_gb` (None when no limit given)

    @property
    def message(self) -> str:
        tail = (f"; about {self.steps_to_limit} more step(s) to the host limit" if self.steps_to_limit is not None
                else "")
        return (f"driver host memory after '{self.stage}' grew {self.growth_gb:+.2f} GB over "
                f"{len(self.series_gb) - 1} step(s) ({' -> '.join(f'{v:.2f}' for v in self.series_gb)} GB, "
                f"{self.per_step_gb:+.2f} GB/step){tail}")


def memory_points(lines: Iterable[str]) -> list[MemoryPoint]:
    points: list[MemoryPoint] = []
    stage: str | None = None
    step: int | None = None
    for line in lines:
        if m := _STEP.search(line):
            step = int(m.group(1))
            continue
        if m := _HEADER.search(line):
            stage = m.group("stage").strip()
            continue
        if stage is not None and (m := _AFTER.search(line)):
            points.append(MemoryPoint(stage, float(m.group("gb")), step))
            stage = None
    return points


def host_memory_growth(lines: Sequence[str], window: int = 3, min_growth_gb: float = 1.0,
                       limit_gb: float | None = None) -> HostMemoryGrowth | None:
    """The stage whose driver RSS rose strictly over its last `window` occurrences by >= `min_growth_gb` in all
    (the largest such rise), or None. One-off jumps (loading, the first validation) do not trigger it."""
    by_stage: dict[str, list[MemoryPoint]] = {}
    for p in memory_points(lines):
        by_stage.setdefault(p.stage, []).append(p)
    worst: HostMemoryGrowth | None = None
    for stage, pts in by_stage.items():
        if len(pts) < window + 1:
            continue
        last = pts[-(window + 1):]
        values = [p.after_gb for p in last]
        if any(b <= a for a, b in zip(values, values[1:])):
            continue
        growth = values[-1] - values[0]
        if growth < min_growth_gb:
            continue
        per_step = growth / window
        to_limit = int((limit_gb - values[-1]) // per_step) if limit_gb is not None and per_step > 0 else None
        found = HostMemoryGrowth(stage, tuple(values), tuple(p.step for p in last), round(growth, 2),
                                 round(per_step, 2), max(to_limit, 0) if to_limit is not None else None)
        if worst is None or found.growth_gb > worst.growth_gb:
            worst = found
    return worst
