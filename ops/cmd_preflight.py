"""`ops preflight`: run the node checks, print a table (or `--json`), optionally apply safe fixes.

Parsing flags into a `CheckContext` and rendering are here; running checks and fixes is in
`healthchecks.runner`. I/O: reads the config file, prints, and (with --fix) signals this user's leftovers.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from healthchecks.base import CheckContext, CheckResult, Status, worst
from ops.errors import UserError
from ops.logs import redact

HELP = """Check this node before a long GRPO run; each check says PASS / WARN / FAIL / UNKNOWN and how to fix it.

\b
Exit codes: 0 nothing FAILed; 1 something FAILed; 2 usage error.
\b
Examples:
  ops preflight                         all checks, a table
  ops preflight --json --skip wandb     machine-readable
  ops preflight --fix --dry-run         show what --fix would stop (only your own leftovers)
  ops preflight --config grpo.yaml -- cluster.gpus_per_node=8 ++policy.x=1
  ops preflight --ray-address http://HEAD:8265   every alive node of a Ray cluster, one row per node/check
"""

STATUS_STYLE = {Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.UNKNOWN: "cyan"}


def _names(values: Sequence[str]) -> list[str]:
    """--only a,b --only c -> [a, b, c]."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _check_overrides(overrides: Sequence[str]) -> None:
    """Hydra's override grammar; a bad override is a UserError naming it."""
    if not overrides:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parser = OverridesParser.create()
    for item in overrides:
        try:
            parser.parse_overrides([item])
        except Exception as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"bad override {item!r}: {msg}; use key=value, +key=value or ++key=value") from None


def gpus_from_config(config: Path, overrides: Sequence[str]) -> int | None:
    """cluster.gpus_per_node of the effective config (defaults chain + overrides, as NeMo RL loads it)."""
    from omegaconf import OmegaConf

    from training.config import load_config
    try:
        try:
            cfg = load_config(config, overrides)
        except UserError:
            # A bad override is the training_config check's FAIL (with NeMo RL's text and the `++` fix),
            # not a usage error: read the GPU count from the YAML alone.
            cfg = load_config(config, ())
        value = OmegaConf.select(cfg, "cluster.gpus_per_node", default=None)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot read config {config}: {' '.join(str(err).split())[:200]}; "
                        "give a readable NeMo RL YAML") from None
    return value if isinstance(value, int) else None


def build_context(gpus: int | None, require_gpu: bool, results_dir: str, config: str | None,
                  overrides: Sequence[str], trainer: str, min_free_gpu_mib: int | None,
                  min_free_disk_gib: float | None) -> CheckContext:
    """Validate the flags and make the (frozen) context every check reads."""
    from healthchecks.gpu import OnceReader
    from healthchecks.gpu_seam import default_reader

    env = dict(os.environ)
    fake = env.get("GRPO_OPS_FAKE_GPU")
    if fake and not os.access(fake, os.R_OK):
        raise UserError(f"GRPO_OPS_FAKE_GPU={fake!r} is not a readable file; unset it or write one with "
                        "FakeGpuReader.dump()")
    cfg_path = None
    if config is not None:
        cfg_path = Path(config)
        if not cfg_path.is_file() or not os.access(cfg_path, os.R_OK):
            raise UserError(f"config file {config!r} not found or unreadable; give the path of a readable YAML")
    if overrides and cfg_path is None:
        raise UserError(f"overrides {' '.join(overrides)!r} given without --config; add --config FILE")
    _check_overrides(overrides)
    if gpus is None and cfg_path is not None:
        gpus = gpus_from_config(cfg_path, overrides)
    rd = Path(results_dir)
    if rd.exists() and not rd.is_dir():
        raise UserError(f"--results-dir {results_dir!r} is a file, not a directory; give a directory")
    extra = {}
    if min_free_gpu_mib is not None:
        extra["min_free_gpu_mib"] = min_free_gpu_mib
    if min_free_disk_gib is not None:
        extra["min_free_disk_gib"] = min_free_disk_gib
    try:
        reader = OnceReader(default_reader(env))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"GRPO_OPS_FAKE_GPU={fake!r} is not a fake GPU file ({err}); rewrite it with "
                        "FakeGpuReader.dump()") from None
    return CheckContext(gpus_required=gpus, require_gpu=require_gpu, results_dir=rd, config_path=cfg_path,
                        overrides=tuple(overrides), trainer=trainer, env=env, gpu=reader, **extra)


def _redacted(r: CheckResult) -> dict:
    """to_json with every string passed through the secret redactor (command lines can carry tokens)."""
    def walk(v):
        if isinstance(v, str):
            return redact(v)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v
    return walk(r.to_json())


def summary(results: Sequence[CheckResult]) -> dict:
    counts = {s.value: sum(r.status == s for r in results) for s in Status}
    overall = worst(results)
    return {**counts, "total": len(results), "worst": overall.value, "exit_code": exit_code(results)}


def exit_code(results: Sequence[CheckResult]) -> int:
    return 1 if any(r.status == Status.FAIL for r in results) else 0


def render_table(results: Sequence[CheckResult], fix_lines: Sequence[str], file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    file = file or sys.stdout
    console = Console(file=file, width=None if file.isatty() else 160, highlight=False, soft_wrap=False)
    table = Table(show_lines=False, expand=False)
    per_node = any(r.node for r in results)     # results from `--ray-address`: say which node each is from
    if per_node:
        table.add_column("node", no_wrap=True)
    for col, kw in (("check", {"no_wrap": True}), ("status", {"no_wrap": True}), ("detail", {"ratio": 3}),
                    ("fix", {"ratio": 2})):
        table.add_column(col, **kw)
    for r in results:
        j = _redacted(r)
        table.add_row(*([_esc(r.node or "")] if per_node else []), r.name,
                      f"[{STATUS_STYLE[r.status]}]{r.status.value}[/]", _esc(j["detail"]), _esc(j["fix"]))
    console.print(table)
    for line in fix_lines:
        console.print(_esc(redact(line)))
    s = summary(results)
    console.print(f"{s['total']} checks: {s['PASS']} PASS, {s['WARN']} WARN, {s['FAIL']} FAIL, "
                  f"{s['UNKNOWN']} UNKNOWN")


def _esc(text: str) -> str:
    from rich.markup import escape
    return escape(text)


@click.command("preflight", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--only", multiple=True, metavar="NAMES", help="Run only these checks (comma-separated or repeated).")
@click.option("--skip", multiple=True, metavar="NAMES", help="Skip these checks (comma-separated or repeated).")
@click.option("--gpus", type=click.IntRange(min=0), default=None, help="GPUs the run needs (default: the "
              "config's cluster.gpus_per_node).")
@click.option("--require-gpu", is_flag=True, help="No GPU / no NVML is a FAIL instead of UNKNOWN.")
@click.option("--results-dir", default="results", show_default=True, help="Where results and checkpoints go.")
@click.option("--config", "config", default=None, metavar="FILE", help="The run's YAML (NeMo RL or embedded).")
@click.option("--trainer", type=click.Choice(["embedded", "nemo-rl"]), default="embedded", show_default=True)
@click.option("--min-free-gpu-mib", type=click.IntRange(min=0), default=None, help="Default 2048.")
@click.option("--min-free-disk-gib", type=click.FloatRange(min=0), default=None, help="Default 50.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {results: [...], summary: {...}}.")
@click.option("--fix", is_flag=True, help="Apply safe fixes to your own leftovers, then check again.")
@click.option("--dry-run", is_flag=True, help="With --fix: print what would be done, do nothing.")
@click.option("--ray-address", metavar="URL", help="Run the checks on every alive node of this Ray cluster "
              "(its dashboard / Jobs API URL, http://HEAD:8265); results per node.")
@click.argument("overrides", nargs=-1, metavar="[-- OVERRIDES]")
def command(only, skip, gpus, require_gpu, results_dir, config, trainer, min_free_gpu_mib, min_free_disk_gib,
            as_json, fix, dry_run, ray_address, overrides):
    from healthchecks import runner

    if dry_run and not fix:
        raise UserError("--dry-run only applies to --fix; use: ops preflight --fix --dry-run")
    if fix and ray_address:
        raise UserError("--fix acts on this node only; drop --ray-address, or run `ops preflight --fix` on the "
                        "node that failed")
    ctx = build_context(gpus, require_gpu, results_dir, config, overrides, trainer, min_free_gpu_mib,
                        min_free_disk_gib)
    only_names, skip_names = _names(only), _names(skip)
    if ray_address:
        from healthchecks.cluster import cluster_preflight
        results = cluster_preflight(ray_address, ctx, only_names, skip_names)
    else:
        results = runner.run_preflight(ctx, only_names, skip_names)
    fix_lines: list[str] = []
    if fix:
        fix_lines = runner.apply_fixes(ctx, results, dry_run) or ["nothing to fix"]
        if not dry_run:
            ctx = build_context(gpus, require_gpu, results_dir, config, overrides, trainer, min_free_gpu_mib,
                                min_free_disk_gib)  # a fresh GPU snapshot after the fixes
            results = runner.run_preflight(ctx, only_names, skip_names)
    if as_json:
        out = {"results": [_redacted(r) for r in results], "summary": summary(results)}
        if fix:
            out["fix"] = {"dry_run": dry_run, "lines": [redact(line) for line in fix_lines]}
        click.echo(json.dumps(out, indent=1, default=str))
    else:
        render_table(results, fix_lines)
    return exit_code(results)
