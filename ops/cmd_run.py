"""`ops run` (launch and supervise a trainer), `ops status`, `ops logs`, `ops diagnose`, `ops clean`.
Wires the CLI to ops.supervisor; the run's files live under results/<exp>/ (docs/contracts.md).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
import os
import shlex
import subprocess
import sys
from pathlib import Path

import click
import structlog

from ops import runview
from ops.budget import make_budget
from ops.errors import UserError
from ops.journal import read_journal
from ops.logs import redact, redact_env
from ops.runs import RunLock, default_exp_name, exp_dir, is_supervised, resolve_exp, resume_info
from ops.supervisor import Supervisor, SupervisorOptions
from training import registry
from training.spec import Plan, RunPaths

_PARAM = {"docker": "docker_image"}     # cli key -> click parameter name, where they differ
EXIT_HELP = "Exit codes: 0 the run SUCCEEDED (or --dry-run/--detach), 1 it ended failed or cancelled, 2 usage error."


def _backend(docker: str | None, ray_address: str | None, memory_limit_mib: int | None, run_dir: Path,
             grace_s: float = 10.0):
    """The backend by flag; Docker and Ray backends are imported only when asked for."""
    if docker and ray_address:
        raise UserError("--docker and --ray-address exclude each other; pick one backend")
    if docker:
        try:
            from ops.backends.docker import DockerBackend
        except ImportError as err:
            raise UserError(f"--docker needs ops.backends.docker, which is not available here ({err})") from None
        return DockerBackend(image=docker, memory_limit_mib=memory_limit_mib, run_dir=run_dir)
    if ray_address:
        try:
            from ops.backends.ray_job import RayJobBackend
        except ImportError as err:
            raise UserError(f"--ray-address needs ops.backends.ray_job, which is not available ({err})") from None
        return RayJobBackend(address=ray_address, stop_wait_s=grace_s)   # Ray's own SIGTERM -> SIGKILL grace
    from ops.backends.local import LocalBackend
    return LocalBackend(memory_limit_mib=memory_limit_mib, run_dir=run_dir)


def _preflight_runner(spec, plan: Plan, paths: RunPaths, results: Path, gpus: int | None):
    """A callable running the preflight checks -> (ok, lines); None when preflight is not installed.
    The checks see the environment the trainer will be launched with (e.g. the TORCH_CUDA_ARCH_LIST that
    the NeMo RL launch sets from the detected GPUs), not only this shell's."""
    import dataclasses
    try:
        from healthchecks.base import Status
        from healthchecks.runner import run_preflight
        from ops.cmd_preflight import build_context
    except ImportError:
        return None
    config = str(plan.config_path) if plan.config_path.is_file() else None
    ctx = build_context(gpus, False, str(results), config, plan.overrides if config else (), spec.name, None, None)
    try:
        launch_env = spec.launch(plan, paths, dict(ctx.env), first=True).env
        ctx = dataclasses.replace(ctx, env={**ctx.env, **launch_env})
    except Exception:   # a bad plan is reported by the checks themselves (training_config)
        pass

    def run() -> tuple[bool, list[str]]:
        checks = run_preflight(ctx)
        lines = [f"{r.status.value} {r.name}: {r.detail}" + (f" (fix: {r.fix})" if r.fix else "")
                 for r in checks if r.status is not Status.PASS]
        lines.sort(key=lambda ln: not ln.startswith("FAIL"))     # the reason first
        return not any(r.status is Status.FAIL for r in checks), lines
    return run


def _events_log(path: Path) -> None:
    """Also write every structlog event as a JSON line to results/<exp>/ops/events.log."""
    import json
    fh = open(path, "a", buffering=1)

    def tee(_logger, _method, event_dict):
        fh.write(json.dumps({k: str(v) if not isinstance(v, (int, float, bool, type(None))) else v
                             for k, v in event_dict.items()}) + "\n")
        return event_dict
    cfg = structlog.get_config()
    procs = list(cfg["processors"])
    structlog.configure(processors=procs[:-1] + [tee, procs[-1]])


def _detach(exp: str, paths: RunPaths) -> None:
    """Re-run this command in a new session, in the background, bound to `exp`; survives the terminal."""
    args = [a for a in sys.argv[1:] if a != "--detach"]
    if "--exp" not in args and not any(a.startswith("--exp=") for a in args):
        cut = args.index("--") if "--" in args else len(args)
        args[cut:cut] = ["--exp", exp]
    paths.ops_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.ops_dir / "supervisor.out", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ops.cli", *args], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    click.echo(f"{exp}: supervisor pid {proc.pid} (detached); follow with `ops logs -f {exp}`, "
               f"`ops status {exp}`")


def _dry_run(spec, plan: Plan, paths: RunPaths, exp: str, budget_text: str) -> None:
    env = dict(os.environ)
    if hasattr(spec, "describe"):
        click.echo(redact(spec.describe(plan, paths, env, True)))
    else:
        from ops.remedies import ladder
        launch = spec.launch(plan, paths, env, True)
        shown = {k: v for k, v in launch.env.items() if env.get(k) != v}
        click.echo(f"cd {shlex.quote(str(launch.cwd))}\n" + redact(" ".join(shlex.quote(a) for a in launch.argv)))
        click.echo("\nenvironment (set by grpo-ops; secrets redacted):")
        for k, v in sorted({**redact_env(shown), "GRPO_OPS_RUN_ID": exp, "GRPO_OPS_ATTEMPT": "1"}.items()):
            click.echo(f"  {k}={v}")
        click.echo("\nremedy ladder:")
        for line in ladder(spec.knobs):
            click.echo(f"  {line}")
    click.echo(f"\nexperiment: {exp}  (results dir {paths.root})\nbudget: {budget_text}")


@click.command("run", context_settings={"ignore_unknown_options": False}, epilog=EXIT_HELP)
@click.option("--config", "config", type=click.Path(path_type=Path), help="Trainer config YAML (default: the trainer's).")
@click.option("--trainer", default="embedded", show_default=True, help="Trainer spec: embedded | nemo-rl.")
@click.option("--repo", type=click.Path(path_type=Path), help="NeMo RL checkout (--trainer nemo-rl).")
@click.option("--exp", help="Experiment name under results/ (default <YYYYMMDD>/<trainer>/<config stem>_NNN).")
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--resume", "resume_exp", help="Continue experiment EXP from its journal (after the supervisor died).")
@click.option("--detach", is_flag=True, help="Run the supervisor in the background (own session).")
@click.option("--dry-run", is_flag=True, help="Print the command, environment and remedy ladder; start nothing.")
@click.option("--skip-preflight", is_flag=True, help="Do not run the preflight checks first.")
@click.option("--max-attempts", type=int, default=5, show_default=True)
@click.option("--deadline", help="Give up launching after this local time of day (HH:MM).")
@click.option("--memory-limit-mib", type=int, help="Local backend: run each attempt in a memory cgroup of M MiB.")
@click.option("--docker", "docker_image", metavar="IMAGE", help="Run the trainer in a container of IMAGE.")
@click.option("--ray-address", help="Submit the trainer as a Ray job to this cluster (http://host:8265).")
@click.option("--gpus", type=int, help="GPUs the run may use (constraints, preflight).")
@click.option("--hang-factor", type=float, default=3.0, show_default=True, help="Hang deadline = factor x median step.")
@click.option("--hang-floor-s", type=float, default=300.0, show_default=True, help="Smallest hang deadline.")
@click.option("--startup-timeout-s", type=float, default=1800.0, show_default=True,
              help="Deadline for start-up and the first step.")
@click.option("--grace-s", type=float, default=10.0, show_default=True, help="SIGTERM -> SIGKILL grace.")
@click.option("--notify", metavar="URL|env:NAME", help="Webhook for give-up / recovery / success (Slack-style).")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics of the run on this port.")
@click.option("--metrics-textfile", type=click.Path(path_type=Path), help="Write Prometheus metrics to this file.")
@click.option("--metrics-addr", help="Address for --metrics-port (default 0.0.0.0).")
@click.option("--wandb/--no-wandb", "wandb", default=None, help="Log supervisor events to W&B (default: when configured).")
@click.option("--eval-cmd", metavar="CMD", help="After success, run CMD on the base model and the best checkpoint "
              "({model}, {which}, {out}, {step} substituted); scores go into the report.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def run_command(config, trainer, repo, exp, results, resume_exp, detach, dry_run, skip_preflight, max_attempts,
                deadline, memory_limit_mib, docker_image, ray_address, gpus, hang_factor, hang_floor_s,
                startup_timeout_s, grace_s, notify, metrics_port, metrics_textfile, metrics_addr, wandb, eval_cmd,
                overrides):
    """Launch the trainer and supervise it: watch, classify failures, recover, record.

    Overrides follow `--` in NeMo RL's grammar (key=value, ++key=value).
    """
    cli = dict(memory_limit_mib=memory_limit_mib, docker=docker_image, ray_address=ray_address,
               max_attempts=max_attempts, deadline=deadline, gpus=gpus, repo=str(repo) if repo else None,
               hang_factor=hang_factor, hang_floor_s=hang_floor_s, startup_timeout_s=startup_timeout_s,
               grace_s=grace_s, notify=notify, metrics_port=metrics_port,
               metrics_textfile=str(metrics_textfile) if metrics_textfile else None, metrics_addr=metrics_addr,
               wandb=wandb, eval_cmd=eval_cmd)
    if eval_cmd:
        from ops.evaluate import check_template
        check_template(eval_cmd)            # a bad template is a usage error now, not after the night
    resume = None
    if resume_exp:
        exp, paths = resolve_exp(resume_exp, results)
        paths = RunPaths(paths.root.absolute())      # the trainer runs elsewhere: no relative paths
        resume = resume_info(paths)
        if resume.ended:
            raise UserError(f"experiment {exp!r} already ended ({resume.state}); start a new one with `ops run`")
        trainer = resume.trainer
        ctx = click.get_current_context()
        saved = resume.options.get("cli", {})
        cli = {k: (saved[k] if k in saved and ctx.get_parameter_source(_PARAM.get(k, k)) is
                   click.core.ParameterSource.DEFAULT else v) for k, v in cli.items()}
        repo = Path(cli["repo"]) if cli.get("repo") else None
    now = dt.datetime.now()
    budget = make_budget(int(cli["max_attempts"]), cli.get("deadline"), now)
    deadline_ts = next((p.wall_epoch_s for p in getattr(budget, "parts", ()) if hasattr(p, "wall_epoch_s")), None)
    spec = registry.make(trainer, repo=repo, deadline_ts=deadline_ts)
    plan = resume.plan if resume else Plan(config or spec.default_config(), tuple(overrides))
    if not resume and not plan.config_path.exists() and trainer != "nemo-rl":
        raise UserError(f"--config {plan.config_path} does not exist; pass an existing YAML file")
    if not resume:
        exp = exp or default_exp_name(trainer, plan.config_path, results, now.date())
        paths = RunPaths(exp_dir(exp, results).absolute())
        if paths.journal.exists() and not dry_run:
            raise UserError(f"experiment {exp!r} already has a journal; continue it with `ops run --resume {exp}` "
                            "or pick another --exp")
    if dry_run:
        _dry_run(spec, plan, paths, exp, budget.describe())
        return 0
    if detach:
        _detach(exp, paths)
        return 0
    opts = SupervisorOptions(grace_s=cli["grace_s"], hang_factor=cli["hang_factor"], hang_floor_s=cli["hang_floor_s"],
                             startup_timeout_s=cli["startup_timeout_s"], gpus=cli.get("gpus"))
    return _supervise(spec, plan, paths, exp, budget, cli, resume, skip_preflight or resume is not None, opts,
                      results)


def _supervise(spec, plan, paths, exp, budget, cli, resume, skip_preflight, options, results) -> int:
    backend = _backend(cli.get("docker"), cli.get("ray_address"), cli.get("memory_limit_mib"), paths.root.absolute(),
                       cli.get("grace_s", 10.0))
    paths.ops_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(paths, exp):
        click.echo(f"{exp}: supervising in {paths.root}; follow with `ops status --watch {exp}` or "
                   f"`ops logs -f {exp}`", err=True)
        _events_log(paths.ops_dir / "events.log")
        gpus = cli.get("gpus")
        if gpus is None and spec.name == "embedded":
            gpus = _gpu_count()   # 0 on a CPU machine: no check may demand a GPU; TP may not exceed the GPUs
        options = replace(options, gpus=gpus if options.gpus is None else options.gpus)
        preflight = None if skip_preflight else _preflight_runner(spec, plan, paths, results, gpus)
        listeners = _listeners(paths, {**cli, "trainer_logs_wandb": _trainer_logs_wandb(spec, plan)})
        saved = {**cli, "notify": cli["notify"] if str(cli.get("notify") or "").startswith("env:") else None}
        sup = Supervisor(spec, backend, paths, plan, budget, run_id=exp, options=options, preflight=preflight,
                         resume=resume, argv=[redact(a) for a in sys.argv[1:]], gpu_reader=_gpu_reader(),
                         listeners=listeners, extra_start={"cli": saved})
        try:
            out = sup.run()
        finally:
            _close_listeners(listeners)
        if out.ok and cli.get("eval_cmd"):
            _post_run_eval(cli["eval_cmd"], paths, exp, out.attempts)
    click.echo(f"{exp}: {out.state.value} after {out.attempts} attempt(s), step {out.steps_done}/"
               f"{out.total_steps}: {out.reason}")
    return 0 if out.ok else 1


def _post_run_eval(eval_cmd: str, paths: RunPaths, exp: str, attempt: int) -> None:
    """--eval-cmd on the base model and the best checkpoint; journaled as `eval` records; never fails the run."""
    from ops.evaluate import run_evals
    from ops.journal import Journal
    results = run_evals(eval_cmd, paths)
    journal = Journal(paths.journal, exp)
    try:
        for r in results:
            journal.append("eval", attempt, what="post_run", **r)
    finally:
        journal.close()
    for r in results:
        click.echo(f"{exp}: eval {r['which']} ({r['model']}): " + (f"score {r['score']}" if r["ok"] else r["error"]))


def _gpu_reader():
    """The GPU seam's reader when a GPU (or the fake) is there; None on a CPU machine."""
    if not os.environ.get("GRPO_OPS_FAKE_GPU") and not Path("/dev/nvidiactl").exists():
        return None
    from healthchecks.gpu_seam import default_reader
    try:
        return default_reader()
    except Exception:
        return None


def _gpu_count() -> int:
    reader = _gpu_reader()
    if reader is None:
        return 0
    try:
        return len(reader.snapshot().gpus)
    except Exception:
        return 0


def _trainer_logs_wandb(spec, plan) -> bool:
    """Whether the trainer's effective config logs to W&B (logger.wandb_enabled); False when unreadable."""
    from training.spec import cfg_get
    try:
        return bool(cfg_get(spec.resolve(plan), "logger.wandb_enabled", False))
    except Exception:
        return False


def _listeners(paths: RunPaths, cli: dict) -> list:
    """Journal listeners of the sinks part (webhook, Prometheus, W&B), each non-blocking."""
    try:
        from ops.sinks import build_listeners
    except ImportError:
        return []
    return list(build_listeners(cli, paths))


def _close_listeners(listeners: list) -> None:
    try:
        from ops.sinks import close_listeners
    except ImportError:
        return
    close_listeners(listeners)


@click.command("status")
@click.argument("exp", required=False)
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--watch", is_flag=True, help="A live view, refreshed until the run ends.")
def status_command(exp, results, as_json, watch):
    """State, attempt, step i/N, last reward and accuracy, step time, ETA of EXP (default: the latest)."""
    exp, paths = resolve_exp(exp, results)
    if watch:
        try:
            from ops.status_watch import watch as live_view   # the report part's live view
        except ImportError:
            raise UserError("--watch is not available in this install (ops.status_watch missing)") from None
        return live_view(exp, paths)
    s = runview.collect_status(exp, paths)
    click.echo(runview.dumps(s) if as_json else runview.render_status(s))
    return 0


@click.command("logs")
@click.argument("exp", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--events", is_flag=True, help="The supervisor's structured events instead of the trainer output.")
def logs_command(exp, follow, results, events):
    """The trainer's output of EXP (default: the latest experiment)."""
    exp, paths = resolve_exp(exp, results)
    path = paths.ops_dir / "events.log" if events else paths.output_log
    if follow:
        try:
            runview.follow(path, paths, sys.stdout)
        except KeyboardInterrupt:
            pass
        return 0
    if not path.exists():
        raise UserError(f"{path} does not exist yet; the run has not started its trainer")
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            sys.stdout.write(chunk.decode("utf-8", "replace"))
    return 0


@click.command("diagnose")
@click.argument("logfile", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.option("--trainer", default="embedded", show_default=True)
@click.option("--repo", type=click.Path(path_type=Path))
@click.option("--config", type=click.Path(path_type=Path), help="The config the log's run used (for the remedy).")
def diagnose_command(logfile, as_json, trainer, repo, config):
    """Run the classifier over LOGFILE (its last attempt): the failure, its evidence, the remedy."""
    if not logfile.is_file():
        raise UserError(f"log file {logfile} not found; pass a path to a trainer log (e.g. results/<exp>/output.log)")
    lines = runview.last_attempt_lines(logfile.read_text(errors="replace"))
    try:
        spec = registry.make(trainer, repo=repo)
    except UserError:
        spec = None
    plan = _plan_for_log(logfile, spec, config)
    d = runview.diagnose(lines, spec, plan)
    click.echo(runview.dumps(d) if as_json else runview.render_diagnosis(d, str(logfile)))
    return 0


def _plan_for_log(logfile: Path, spec, config: Path | None) -> Plan | None:
    """The plan of the log's last attempt when the log sits in a run dir; else --config / the default."""
    attempts = [r for r in read_journal(logfile.parent / "ops" / "journal.jsonl") if r["kind"] == "attempt_start"]
    if attempts and config is None:
        return Plan.from_json(attempts[-1]["plan"])
    if config is not None:
        return Plan(config)
    return Plan(spec.default_config()) if spec is not None else None


@click.command("clean")
@click.argument("exp", required=False)
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--dry-run", is_flag=True, help="Say what would be stopped; stop nothing.")
def clean_command(exp, results, dry_run):
    """Stop what EXP left behind (processes carrying its GRPO_OPS_RUN_ID marker, its cgroups)."""
    exp, paths = resolve_exp(exp, results)
    if is_supervised(paths):
        raise UserError(f"experiment {exp!r} has a live supervisor; stop it first (SIGTERM its pid, see "
                        f"`ops status {exp}`)")
    from ops.backends.local import LocalBackend
    lines = _clean_run_backend(paths, exp, dry_run)    # first: Ray / Docker stop their own process trees
    lines += LocalBackend(run_dir=paths.root.absolute()).cleanup(exp, dry_run=dry_run)
    click.echo("\n".join(lines) if lines else f"{exp}: nothing left to clean")
    return 0


def _clean_run_backend(paths: RunPaths, exp: str, dry_run: bool) -> list[str]:
    """A run made with --ray-address or --docker: clean through that backend (its jobs by metadata, its
    containers by labels; others' untouched). [] for a local run: the local sweep follows anyway."""
    start = next((r for r in read_journal(paths.journal) if r["kind"] == "run_start"), {})
    cli = start.get("cli") or {}
    if not (cli.get("ray_address") or cli.get("docker")):
        return []
    try:
        return _backend(cli.get("docker"), cli.get("ray_address"), None, paths.root.absolute()) \
            .cleanup(exp, dry_run=dry_run)
    except UserError as err:
        return [f"could not clean through the run's backend: {err}"]


commands = (run_command, status_command, logs_command, diagnose_command, clean_command)
command = run_command
