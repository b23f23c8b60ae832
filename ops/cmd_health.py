"""`ops health [EXP]`: exit 0 while the supervised run is healthy (or finished well), 1 when it is hung, dead,
given up or not there yet. For Docker's HEALTHCHECK and Kubernetes / systemd probes: reads heartbeat.json,
state.json, the journal's tail and /proc/locks only (no GPU calls, no subprocesses). Verdict: ops.health.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ops import health
from ops.errors import UserError
from ops.runs import exp_dir
from training.spec import RunPaths

_ENV = "GRPO_OPS_HEALTH_"


@click.command("health")
@click.argument("exp", required=False)
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              envvar="GRPO_OPS_RESULTS", help="The results folder (env GRPO_OPS_RESULTS).")
@click.option("--max-heartbeat-age-s", type=float, default=health.HealthLimits.max_heartbeat_age_s,
              show_default=True, envvar=_ENV + "MAX_HEARTBEAT_AGE_S",
              help="Unhealthy when the supervisor's heartbeat is older (env GRPO_OPS_HEALTH_MAX_HEARTBEAT_AGE_S).")
@click.option("--max-step-age-s", type=float, default=health.HealthLimits.max_step_age_s, show_default=True,
              envvar=_ENV + "MAX_STEP_AGE_S",
              help="Unhealthy when RUNNING with no new step for longer (env GRPO_OPS_HEALTH_MAX_STEP_AGE_S).")
@click.option("--max-startup-s", type=float, default=health.HealthLimits.max_startup_s, show_default=True,
              envvar=_ENV + "MAX_STARTUP_S",
              help="Unhealthy when an attempt has no first step after this (env GRPO_OPS_HEALTH_MAX_STARTUP_S).")
@click.option("--max-busy-s", type=float, default=health.HealthLimits.max_busy_s, show_default=True,
              envvar=_ENV + "MAX_BUSY_S",
              help="A stale heartbeat is fine this long while the supervisor holds its lock (env "
                   "GRPO_OPS_HEALTH_MAX_BUSY_S).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def command(exp, results, max_heartbeat_age_s, max_step_age_s, max_startup_s, max_busy_s, as_json):
    """Is the supervised run EXP (default: the one with the newest heartbeat) alive and making progress?

    \b
    Exit codes: 0 healthy or SUCCEEDED; 1 hung, dead, given up (FAILED_*/CANCELLED) or no run yet;
    2 usage error. Prints one line: the verdict and why.
    """
    try:
        limits = health.HealthLimits(max_heartbeat_age_s, max_step_age_s, max_startup_s, max_busy_s)
    except ValueError as err:
        flag = "--" + str(err).split(" ", 1)[0].replace("_", "-")
        raise UserError(f"{flag} {str(err).split(' ', 1)[1]}; pass a positive number of seconds") from None
    if exp is not None:
        found: tuple[str, RunPaths] | None = (exp, RunPaths(exp_dir(exp, results)))
    else:
        found = health.find_latest(results)
    snap = health.read_snapshot(*found) if found else health.RunSnapshot(None)
    verdict = health.judge(snap, limits, time.time())
    if as_json:
        click.echo(json.dumps(verdict.to_json()))
    else:
        where = verdict.exp or f"{results}/"
        click.echo(f"{verdict.status}: {where}: {verdict.reason}")
    return 0 if verdict.is_healthy else 1
