"""Running preflight: select checks, run them, apply the fixes they name. The shared entry point for
`ops preflight` and for the supervisor's PREFLIGHT state (`gate`). I/O: whatever the checks and fixes do.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from healthchecks.base import FIXES, CheckContext, CheckResult, Status, run_checks, select
from healthchecks.registry_modules import load_checks

log = structlog.get_logger()


def run_preflight(ctx: CheckContext, only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[CheckResult]:
    """Results of the chosen checks in registry order; an unknown name is a UserError listing valid ones."""
    load_checks()
    return run_checks(ctx, select(only, skip))


def fixes_named(results: Sequence[CheckResult]) -> list[str]:
    """The registered fixes the results ask for, once each, in result order. Pure."""
    return list(dict.fromkeys(r.fix_id for r in results if r.fix_id and r.fix_id in FIXES))


def apply_fixes(ctx: CheckContext, results: Sequence[CheckResult], dry_run: bool) -> list[str]:
    """Run each named fix (or, with dry_run, say what it would do); a fix that raises is reported, not fatal."""
    lines: list[str] = []
    for fix_id in fixes_named(results):
        try:
            out = FIXES[fix_id](ctx, dry_run)
        except Exception as err:  # a broken fix must not hide the others
            out = [f"fix failed: {type(err).__name__}: {err}"]
        log.info("preflight.fix", fix=fix_id, dry_run=dry_run, lines=out)
        lines.extend(f"[{fix_id}] {line}" for line in out)
    return lines


def gate(ctx: CheckContext, only: Sequence[str] = (), skip: Sequence[str] = ()) -> tuple[bool, list[str]]:
    """(nothing FAILed, one line per non-PASS result): the supervisor's preflight callable."""
    results = run_preflight(ctx, only, skip)
    lines = [f"{r.name}: {r.status.value}: {r.detail}" + (f" (fix: {r.fix})" if r.fix else "")
             for r in results if r.status != Status.PASS]
    return all(r.status != Status.FAIL for r in results), lines
