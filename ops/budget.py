"""Retry budgets as small composable objects (tenacity's `stop_*` style). Pure; the clock is passed in.

    budget = MaxAttempts(5) | Deadline(wall_epoch_s)
    reason = budget.exhausted(BudgetState(attempts=3, now_wall=time.time()))   # None: keep going
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ops.errors import UserError


@dataclass(frozen=True)
class BudgetState:
    attempts: int              # attempts already launched
    now_wall: float            # epoch seconds


class Budget:
    def exhausted(self, st: BudgetState) -> str | None:
        """A reason when no further attempt may start, else None."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __or__(self, other: "Budget") -> "Budget":
        return AnyOf((self, other))


@dataclass(frozen=True)
class MaxAttempts(Budget):
    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"max attempts must be >= 1, got {self.n}")

    def exhausted(self, st: BudgetState) -> str | None:
        return f"{st.attempts} of {self.n} attempts used" if st.attempts >= self.n else None

    def describe(self) -> str:
        return f"max {self.n} attempts"


@dataclass(frozen=True)
class Deadline(Budget):
    wall_epoch_s: float

    def exhausted(self, st: BudgetState) -> str | None:
        if st.now_wall >= self.wall_epoch_s:
            return f"deadline {self._text()} reached"
        return None

    def _text(self) -> str:
        return dt.datetime.fromtimestamp(self.wall_epoch_s).strftime("%Y-%m-%d %H:%M")

    def describe(self) -> str:
        return f"deadline {self._text()}"


@dataclass(frozen=True)
class Unlimited(Budget):
    def exhausted(self, st: BudgetState) -> str | None:
        return None

    def describe(self) -> str:
        return "unlimited"


@dataclass(frozen=True)
class AnyOf(Budget):
    parts: tuple[Budget, ...]

    def exhausted(self, st: BudgetState) -> str | None:
        for part in self.parts:
            reason = part.exhausted(st)
            if reason:
                return reason
        return None

    def describe(self) -> str:
        return " or ".join(p.describe() for p in self.parts)


def parse_deadline(text: str, now: dt.datetime) -> float:
    """`HH:MM` (local time) -> epoch seconds of its next occurrence after `now` (a naive local datetime)."""
    try:
        hh, mm = (int(x) for x in text.split(":"))
        target = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    except ValueError:
        raise UserError(f"--deadline {text!r} is not a time of day; use HH:MM, e.g. --deadline 07:00") from None
    if target <= now:
        target += dt.timedelta(days=1)
    return target.timestamp()


def make_budget(max_attempts: int, deadline: str | None, now: dt.datetime) -> Budget:
    if max_attempts < 1:
        raise UserError(f"--max-attempts {max_attempts} must be at least 1")
    budget: Budget = MaxAttempts(max_attempts)
    if deadline:
        budget = budget | Deadline(parse_deadline(deadline, now))
    return budget
