"""Watching one attempt: tail the trainer's log, parse steps and metrics, run the hang clock.

`LogTailer` does file I/O (reads new bytes from an offset); `parse_line`, `Progress` and `HangClock` are
pure: the clock's `now` is passed in. Line formats are NeMo RL's (reference/nemo_rl.md section 2), which the
embedded workload prints too.
"""

from __future__ import annotations

import re
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ops.classify import GENERIC_SIGNATURES, PHASES
from ops.prefilter import LineScanner
from training.spec import Signature

ATTEMPT_MARK = "### grpo-ops attempt "
_STEP = re.compile(r"={5,} Step (\d+)/(\d+) ={5,}")
_REWARD = re.compile(r"•\s*Avg Reward:\s*(-?[\d.]+(?:e-?\d+)?)")
_ACCURACY = re.compile(r"•\s*Accuracy:\s*(-?[\d.]+(?:e-?\d+)?)")
_STEP_TIME = re.compile(r"•\s*Total step time:\s*([\d.]+)s")
_LOSS = re.compile(r"•\s*Loss:\s*(-?[\d.]+(?:e-?\d+)?)")
_MEMORY_MODEL = re.compile(r"grpo-ops: memory model: (.*)$")
_KV = re.compile(r"(\w+)=(\S+)")
_DONE = ("Max number of steps has been reached", "Timeout has been reached")


@dataclass(frozen=True)
class LineEvent:
    kind: str          # "step" | "phase" | "reward" | "accuracy" | "step_time" | "loss" | "memory_model" | "done"
    value: object = None
    total: int | None = None


_CUES = ("=====", "•", "▶", "grpo-ops:", "Saving checkpoint", "🔍", "has been reached")
CUE_RX = re.compile("|".join(re.escape(c) for c in _CUES))


def matching_lines(lines: list[str], rx: re.Pattern) -> list[int]:
    """Indices of the lines `rx` finds something in: one scan over the joined batch (C speed), not one
    search per line. A match spanning lines counts for the line it starts in."""
    text = "\n".join(lines)
    out: list[int] = []
    pos, line_no = 0, 0
    for m in rx.finditer(text):
        line_no += text.count("\n", pos, m.start())
        pos = m.start()
        if not out or out[-1] != line_no:
            out.append(line_no)
    return out


def parse_line(line: str) -> LineEvent | None:
    """What one log line says, or None. Cheap substring cues first: most lines say nothing."""
    if not any(c in line for c in _CUES):
        return None
    m = _STEP.search(line)
    if m:
        return LineEvent("step", int(m.group(1)), int(m.group(2)))
    if "•" in line:
        for kind, rx in (("reward", _REWARD), ("accuracy", _ACCURACY), ("step_time", _STEP_TIME), ("loss", _LOSS)):
            m = rx.search(line)
            if m:
                return LineEvent(kind, float(m.group(1)))
    for marker, phase in PHASES.items():
        if marker in line:
            return LineEvent("phase", phase)
    m = _MEMORY_MODEL.search(line)
    if m:
        return LineEvent("memory_model", parse_memory_model(m.group(1)))
    if any(d in line for d in _DONE):
        return LineEvent("done")
    return None


def parse_memory_model(text: str) -> dict:
    out: dict = {}
    for k, v in _KV.findall(text):
        try:
            out[k] = int(v) if v.isdigit() else float(v)
        except ValueError:
            out[k] = v
    return out


@dataclass(frozen=True)
class Progress:
    """What the log said so far in this attempt. A new value per event (pure)."""
    step: int | None = None                 # the step being worked on (announced)
    total_steps: int | None = None
    completed_step: int | None = None       # the last step whose results block was printed
    reward: float | None = None
    accuracy: float | None = None
    loss: float | None = None
    step_time_s: float | None = None
    phase: str | None = None
    memory_model: dict | None = None
    first_step: int | None = None
    done: bool = False

    def apply(self, ev: LineEvent) -> "Progress":
        if ev.kind == "step":
            first = self.first_step if self.first_step is not None else ev.value
            return replace(self, step=ev.value, total_steps=ev.total, phase="preparing", first_step=first)
        if ev.kind == "step_time":   # the results block closes a step
            return replace(self, step_time_s=ev.value, completed_step=self.step)
        if ev.kind in ("reward", "accuracy", "loss", "phase", "memory_model"):
            return replace(self, **{ev.kind: ev.value})
        if ev.kind == "done":
            return replace(self, done=True)
        return self


@dataclass(frozen=True)
class HangClock:
    """Deadline for the next sign of progress: learned from step times, longer before the first step.

    deadline after a step = max(factor x median of the observed step intervals, floor_s); before the first
    step the start-up deadline applies. `mark(now)` records a step boundary. Pure.
    """
    factor: float = 3.0
    floor_s: float = 300.0
    startup_s: float = 1800.0
    started_at: float = 0.0
    last_mark: float | None = None
    intervals: tuple[float, ...] = ()

    def mark(self, now: float) -> "HangClock":
        iv = self.intervals if self.last_mark is None else (self.intervals + (now - self.last_mark,))[-50:]
        return replace(self, last_mark=now, intervals=iv)

    def deadline_s(self) -> float:
        if self.last_mark is None:
            return self.startup_s
        if not self.intervals:        # one step seen: no interval yet, the first step may include warm-up
            return max(self.floor_s, self.startup_s / 2)
        return max(self.factor * statistics.median(self.intervals), self.floor_s)

    def expired(self, now: float) -> str | None:
        ref = self.started_at if self.last_mark is None else self.last_mark
        limit = self.deadline_s()
        if now - ref <= limit:
            return None
        what = "first step" if self.last_mark is None else "new step"
        return f"no {what} for {now - ref:.1f}s (deadline {limit:.1f}s)"


class LogTailer:
    """Reads what was appended to a file since the last call; yields whole lines. Does I/O."""

    def __init__(self, path: Path, offset: int = 0, max_chunk: int = 8 << 20):
        self.path = Path(path)
        self.offset = offset
        self.max_chunk = max_chunk
        self._partial = b""

    def read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(self.max_chunk)
        except FileNotFoundError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self._partial + data
        parts = data.split(b"\n")
        self._partial = parts.pop()
        if len(self._partial) > 1 << 20:          # a runaway line without newline: flush it
            parts.append(self._partial)
            self._partial = b""
        return [p.decode("utf-8", "replace").rstrip("\r") for p in parts]


class EvidenceBuffer:
    """The lines classify will see: a tail plus every line matching a signature (kept even when spammed)."""

    def __init__(self, signatures: Sequence[Signature] = (), tail: int = 400, flagged: int = 200):
        self.tail: deque[str] = deque(maxlen=tail)
        self.flagged: deque[tuple[int, str]] = deque(maxlen=flagged)
        self._n = 0
        patterns = [s.pattern for s in (*signatures, *GENERIC_SIGNATURES)]
        patterns.append(r"Traceback \(most recent call last\)")
        self._scanner = LineScanner(patterns)

    def add(self, line: str) -> None:
        self.add_many([line])

    def add_many(self, lines: list[str]) -> list[str]:
        """Take a batch of lines; returns the ones matching a signature. One regex pass over the whole batch."""
        idx = self._scanner.lines(lines)
        hits = [lines[i] for i in idx]
        self.flagged.extend((self._n + 1 + i, lines[i]) for i in idx)
        self._n += len(lines)
        self.tail.extend(lines)
        return hits

    def lines(self) -> tuple[str, ...]:
        start = self._n - len(self.tail) + 1
        early = [ln for n, ln in self.flagged if n < start]
        return tuple(early) + tuple(self.tail)


@dataclass
class AttemptWatch:
    """Mutable per-attempt accumulator owned by the supervisor loop."""
    progress: Progress = field(default_factory=Progress)
    clock: HangClock = field(default_factory=HangClock)
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float | None = None
    first_step_at: float | None = None
