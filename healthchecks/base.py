"""The check contract and registry. Pure apart from calling the checks themselves.

A check is `(CheckContext) -> CheckResult | list[CheckResult]` registered by name. `run_checks` never raises:
a check that raises becomes UNKNOWN with the error in `detail`. Fixes are separate callables a check names
(`CheckResult.fix_id`); `--fix` applies them, `--fix --dry-run` prints them.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.errors import UserError


class Status(str, enum.Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str                 # one line: what was found
    fix: str = ""               # one line: what to do about it ("" when nothing to do)
    data: Mapping[str, Any] = field(default_factory=dict)  # machine-readable findings for --json
    fix_id: str | None = None   # a registered fix `--fix` may apply (only this user's own things)
    node: str | None = None     # set when run across a Ray cluster

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        return d


@dataclass(frozen=True)
class CheckContext:
    """Everything a check may read. Frozen; built once by the CLI."""
    gpus_required: int | None = None       # --gpus N, or the config's cluster.gpus_per_node
    require_gpu: bool = False              # --require-gpu: no GPU is a FAIL rather than UNKNOWN
    results_dir: Path = Path("results")
    config_path: Path | None = None        # a NeMo RL / embedded YAML, when given
    overrides: tuple[str, ...] = ()
    trainer: str = "embedded"
    min_free_gpu_mib: int = 2048
    min_free_disk_gib: float = 50.0
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    gpu: Any = None                        # a healthchecks.gpu_seam.GpuReader; None -> default reader
    uid: int = field(default_factory=os.getuid)


CheckFn = Callable[[CheckContext], "CheckResult | Sequence[CheckResult]"]
FixFn = Callable[[CheckContext, bool], list[str]]   # (ctx, dry_run) -> lines saying what was (or would be) done

REGISTRY: dict[str, CheckFn] = {}
FIXES: dict[str, FixFn] = {}


def register(name: str) -> Callable[[CheckFn], CheckFn]:
    def deco(fn: CheckFn) -> CheckFn:
        REGISTRY[name] = fn
        return fn
    return deco


def register_fix(name: str) -> Callable[[FixFn], FixFn]:
    def deco(fn: FixFn) -> FixFn:
        FIXES[name] = fn
        return fn
    return deco


def select(names_only: Sequence[str] = (), names_skip: Sequence[str] = ()) -> list[str]:
    """The check names to run, in registry order; an unknown name is a UserError listing the valid ones."""
    for name in [*names_only, *names_skip]:
        if name not in REGISTRY:
            raise UserError(f"unknown check {name!r}; valid checks: {', '.join(REGISTRY)}")
    chosen = list(names_only) if names_only else list(REGISTRY)
    return [n for n in REGISTRY if n in chosen and n not in names_skip]


def run_check(name: str, ctx: CheckContext) -> list[CheckResult]:
    """Run one check; never raises."""
    try:
        out = REGISTRY[name](ctx)
    except Exception as err:  # a broken check says "unknown", never "fine"
        return [CheckResult(name, Status.UNKNOWN, f"check raised {type(err).__name__}: {err}",
                            "report this as a grpo-ops bug; rerun with --debug")]
    return [out] if isinstance(out, CheckResult) else list(out)


def run_checks(ctx: CheckContext, names: Sequence[str]) -> list[CheckResult]:
    results: list[CheckResult] = []
    for name in names:
        results.extend(run_check(name, ctx))
    return results


def worst(results: Sequence[CheckResult]) -> Status:
    order = [Status.PASS, Status.UNKNOWN, Status.WARN, Status.FAIL]
    return max((r.status for r in results), key=order.index, default=Status.PASS)
