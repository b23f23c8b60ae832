"""W&B: the supervisor's events (attempts, failures, plan changes) on the trainer's step axis, and
`alert`s on give-up and on recovery. Does network / file I/O (through wandb), in a BackgroundSink thread.

The run goes to the trainer's project (`logger.wandb.project` from the plan, else `grpo-ops`), grouped
with the run id, as its own run (job_type "grpo-ops"), because each NeMo RL launch makes a new W&B run.
Mode: WANDB_MODE when set; else online with a key (WANDB_API_KEY or a netrc login), offline without one.
Custom step axis `trainer/step`: the trainer's step goes back after a resume, which W&B's own step
cannot. The key is never logged.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from ops.logs import redact
from training.spec import RunPaths

log = structlog.get_logger()
DEFAULT_PROJECT = "grpo-ops"


def wandb_mode(env: dict | None = None, home: Path | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_API_KEY"):
        return "online"
    netrc = (home or Path.home()) / ".netrc"
    try:
        return "online" if "api.wandb.ai" in netrc.read_text() else "offline"
    except OSError:
        return "offline"


def project_from_plan(plan: dict | None) -> tuple[str, str | None]:
    """(project, name): the plan's overrides (`logger.wandb.project=...`), else its config file's
    `logger.wandb.{project,name}`, else ("grpo-ops", None)."""
    project = name = None
    for o in (plan or {}).get("overrides", ()):
        key, _, value = o.lstrip("+").partition("=")
        if key == "logger.wandb.project" and value:
            project = value
        elif key == "logger.wandb.name" and value:
            name = value
    if plan and (project is None or name is None):
        from ops.rundata import plan_config, select
        cfg, _ = plan_config([{"kind": "run_start", "plan": plan}])
        if cfg is not None:
            project = project or select(cfg, "logger.wandb.project")
            name = name or select(cfg, "logger.wandb.name")
    return str(project or DEFAULT_PROJECT), (str(name) if name else None)


class WandbEvents:
    """Handler for a BackgroundSink; wandb is imported and the run started on the first record."""

    name = "wandb"

    def __init__(self, paths: RunPaths, project: str | None = None, mode: str | None = None):
        self.paths, self.project, self.mode = paths, project, mode or wandb_mode()
        self.run = None
        self.step = 0
        self.failures: dict[str, int] = {}
        self.plan_changes = 0
        self.events: list[list] = []
        self.last_failure: dict[int, str] = {}
        self.recovered: set[int] = set()

    def _start(self, record: dict) -> None:
        import wandb

        project, name = project_from_plan(record.get("plan"))
        run_id = str(record.get("run_id", "run"))
        wandb_dir = Path(os.environ.get("WANDB_DIR") or self.paths.ops_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(project=self.project or project, name=f"{name or run_id} (ops)", group=name or run_id,
                              job_type="grpo-ops", dir=str(wandb_dir), mode=self.mode,
                              config={"run_id": run_id, "trainer": record.get("trainer")},
                              settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("trainer/step")
        self.run.define_metric("ops/*", step_metric="trainer/step")
        log.info("wandb run started", mode=self.mode, project=self.project or project)

    def handle(self, record: dict) -> None:
        if self.run is None:
            self._start(record)
        kind, attempt = record.get("kind"), int(record.get("attempt", 0))
        data: dict = {"ops/attempt": attempt}
        if kind == "progress":
            self.step = int(record.get("step") or self.step)
            for key in ("step_time_s", "rss_mib", "gpu_mib"):
                if isinstance(record.get(key), (int, float)):
                    data[f"ops/{key}"] = record[key]
            if attempt - 1 in self.last_failure and attempt not in self.recovered:
                self.recovered.add(attempt)
                self._alert("recovered", f"{record.get('run_id')}: attempt {attempt} is training again at step "
                            f"{self.step} after {self.last_failure[attempt - 1]}", "INFO")
        elif kind == "attempt_start":
            self.step = int(record.get("resume_from_step") or 0)
            self._event(record, f"attempt {attempt} launched (resume from {record.get('resume_from_step')})")
        elif kind == "attempt_end" and record.get("failure"):
            fkind = str(record["failure"].get("kind", "unknown"))
            self.failures[fkind] = self.failures.get(fkind, 0) + 1
            self.last_failure[attempt] = fkind
            data[f"ops/failures/{fkind}"] = self.failures[fkind]
            data["ops/failures_total"] = sum(self.failures.values())
            self._event(record, f"{fkind}: {record['failure'].get('summary', '')}")
        elif kind == "decision":
            if record.get("plan_diff"):
                self.plan_changes += 1
                data["ops/plan_changes"] = self.plan_changes
            self._event(record, f"{record.get('action')}: {record.get('reason')} {record.get('plan_diff') or ''}")
        elif kind == "run_end":
            self._event(record, f"{record.get('state')}: {record.get('reason')}")
            self.run.summary.update({"ops/state": record.get("state"), "ops/steps_done": record.get("steps_done"),
                                     "ops/attempts": attempt, "ops/failures": dict(self.failures)})
            if record.get("state") != "SUCCEEDED":
                self._alert("gave up", f"{record.get('run_id')}: {record.get('state')} after {attempt} attempt(s): "
                            f"{record.get('reason')}", "ERROR")
        self.run.log({"trainer/step": self.step, **data})

    def _event(self, record: dict, text: str) -> None:
        self.events.append([record.get("ts"), int(record.get("attempt", 0)), self.step, record.get("kind"),
                            redact(text)])

    def _alert(self, title: str, text: str, level: str) -> None:
        self.run.alert(title=f"grpo-ops: {title}", text=redact(text), level=getattr(self.wandb.AlertLevel, level))

    def close(self) -> None:
        if self.run is None:
            return
        if self.events:
            self.run.log({"ops/events": self.wandb.Table(columns=["ts", "attempt", "step", "kind", "what"],
                                                         data=self.events)})
        self.run.finish()
        self.run = None
        # finish() can return before wandb-core has written the last records; teardown waits for it.
        self.wandb.teardown()
