"""The supervisor's run states and the table of allowed transitions. Pure; no I/O.

    PREFLIGHT --> LAUNCHING --> RUNNING --> SUCCEEDED
        |             |            |
        |             |            +--> RECOVERING --> LAUNCHING   (a relaunch with a new or the same plan)
        |             |                     |
        v             v                     v
    FAILED_PREFLIGHT  FAILED_CONFIG ... every FAILED_* / CANCELLED (terminal)

Any non-terminal state may end in CANCELLED (SIGTERM/SIGINT to the supervisor) or FAILED_BUDGET.
RUNNING -> RECOVERING is also how a resumed supervisor (`ops run --resume`) takes over a run whose previous
supervisor was killed.
"""

from __future__ import annotations

import enum


class State(str, enum.Enum):
    PREFLIGHT = "PREFLIGHT"
    LAUNCHING = "LAUNCHING"
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"
    SUCCEEDED = "SUCCEEDED"
    FAILED_PREFLIGHT = "FAILED_PREFLIGHT"
    FAILED_CONFIG = "FAILED_CONFIG"
    FAILED_OOM = "FAILED_OOM"
    FAILED_HANG = "FAILED_HANG"
    FAILED_CRASH = "FAILED_CRASH"
    FAILED_BUDGET = "FAILED_BUDGET"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED_PREFLIGHT, State.FAILED_CONFIG, State.FAILED_OOM,
                      State.FAILED_HANG, State.FAILED_CRASH, State.FAILED_BUDGET, State.CANCELLED})

_ALWAYS = {State.CANCELLED, State.FAILED_BUDGET}

ALLOWED: dict[State, frozenset[State]] = {
    State.PREFLIGHT: frozenset({State.LAUNCHING, State.FAILED_PREFLIGHT, State.FAILED_CONFIG, *_ALWAYS}),
    State.LAUNCHING: frozenset({State.RUNNING, State.RECOVERING, State.FAILED_CONFIG, State.FAILED_CRASH,
                                *_ALWAYS}),
    State.RUNNING: frozenset({State.SUCCEEDED, State.RECOVERING, *_ALWAYS}),
    State.RECOVERING: frozenset({State.LAUNCHING, State.FAILED_CONFIG, State.FAILED_OOM, State.FAILED_HANG,
                                 State.FAILED_CRASH, *_ALWAYS}),
    **{t: frozenset() for t in TERMINAL},
}


class IllegalTransition(RuntimeError):
    """A bug: the supervisor tried a move the table forbids."""


def check_transition(frm: State, to: State) -> None:
    """Raise IllegalTransition unless `frm -> to` is in the table."""
    if to not in ALLOWED[frm]:
        raise IllegalTransition(f"illegal transition {frm.value} -> {to.value}")


FAMILY_TERMINAL = {
    "oom": State.FAILED_OOM,
    "hang": State.FAILED_HANG,
    "config": State.FAILED_CONFIG,
    "crash": State.FAILED_CRASH,
}
