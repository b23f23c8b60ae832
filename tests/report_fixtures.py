"""Build a run directory in the docs/contracts.md layout by hand (journal, metrics, checkpoints, log).

Scenario `hang_then_recover` (times are supervisor monotonic seconds):
  run_start 0; attempt 1 launched at 2, start-up 3 s, steps 1..5 at 6..10 (1 s each), checkpoint at 3,
  hang at step 6: killed at 16 (6 s hang detection), clean-up 16..17, relaunch with a plan diff;
  attempt 2 launched at 17 resuming from step 3, start-up 2 s, steps 4..12 at 20..28, success at 29;
  run_end wall 30 s.  Goodput: productive 12 s (steps 1-3 of attempt 1, 4-12 of attempt 2),
  recomputed 2 s (steps 4-5 of attempt 1), preflight 2, startup 5, hang 6, cleanup 1, other 2.
"""

from __future__ import annotations

import json
from pathlib import Path

T0 = 1764000000.0       # 2025-11-24T16:00:00Z
CONFIG_YAML = """\
grpo:
  max_num_steps: 12
  val_period: 3
checkpointing:
  enabled: true
  save_period: 3
  keep_top_k: 2
  metric_name: "val:accuracy"
  higher_is_better: true
policy:
  model_name: "tiny/base-model"
"""


def _iso(mono: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(T0 + mono, timezone.utc).isoformat()


class JournalWriter:
    def __init__(self, run_id: str):
        self.run_id, self.seq, self.rows = run_id, 0, []

    def add(self, kind: str, mono: float, attempt: int, **fields) -> dict:
        self.seq += 1
        rec = {"seq": self.seq, "ts": _iso(mono), "mono": mono, "kind": kind, "run_id": self.run_id,
               "attempt": attempt, **fields}
        self.rows.append(rec)
        return rec

    def write(self, path: Path, torn_tail: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r) + "\n" for r in self.rows)
        if torn_tail:
            text += '{"seq": 999, "kind": "progr'
        path.write_text(text)


def reward_at(step: int) -> float:
    return round(0.2 + 0.04 * step + (0.03 if step % 2 else -0.02), 4)


def accuracy_at(step: int) -> float:
    return round(0.3 + 0.03 * step, 4)


def hang_then_recover(root: Path, run_id: str = "20251124/embedded/grpo_tiny_001",
                      plan_path: Path | None = None) -> Path:
    """Write the scenario above under `root` (= results/<exp>) and return root."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = plan_path or root / "plan.yaml"
    cfg.write_text(CONFIG_YAML)
    plan1 = {"config_path": str(cfg), "overrides": ["grpo.max_num_steps=12"]}
    plan2 = {"config_path": str(cfg), "overrides": ["grpo.max_num_steps=12", "++policy.train_micro_batch_size=1"]}
    j = JournalWriter(run_id)
    j.add("run_start", 0, 0, trainer="embedded", plan=plan1, argv=["ops", "run"], budget="3 attempts",
          total_steps=12, supervisor_pid=1234, host="testhost")
    j.add("transition", 0.5, 0, **{"from": "PREFLIGHT", "to": "LAUNCHING", "reason": "preflight passed"})
    j.add("attempt_start", 2, 1, plan=plan1, argv=["python", "-m", "training.grpo"], env={"GRPO_OPS_ATTEMPT": "1"},
          handle={"pid": 4242, "pgid": 4242}, resume_from_step=None)
    for step in range(1, 6):
        j.add("progress", 5 + step, 1, step=step, total_steps=12, reward=reward_at(step),
              accuracy=accuracy_at(step) if step % 3 == 0 else None, step_time_s=1.0, rss_mib=800 + step,
              gpu_mib=None)
    j.add("attempt_end", 16, 1, exit={"code": None, "signal": 9, "oom_killed": False, "detail": "killed after hang"},
          failure={"kind": "hang", "summary": "no step for 6.0 s (deadline 5.0 s) after step 5",
                   "deterministic": False, "phase": "training", "numbers": {"deadline_s": 5.0, "idle_s": 6.0},
                   "evidence_lines": ["▶ Training policy..."]},
          last_step=5, duration_s=14, startup_s=3, stack_dumps=["ops/stacks/attempt-1-4242.txt"],
          peak_rss_mib=805, peak_gpu_mib=None)
    j.add("decision", 16, 1, action="relaunch", reason="hang at step 6; resume from step 3", remedy="relaunch_same",
          new_plan=plan2, plan_diff={"policy.train_micro_batch_size": [None, 1]}, experiment_changed=False)
    j.add("cleanup", 17, 1, actions=["SIGTERM pgid 4242", "SIGKILL pgid 4242"], duration_s=1.0)
    j.add("attempt_start", 17, 2, plan=plan2, argv=["python", "-m", "training.grpo"], env={"GRPO_OPS_ATTEMPT": "2"},
          handle={"pid": 4300, "pgid": 4300}, resume_from_step=3)
    for step in range(4, 13):
        j.add("progress", 16 + step, 2, step=step, total_steps=12, reward=reward_at(step),
              accuracy=accuracy_at(step) if step % 3 == 0 else None, step_time_s=1.0, rss_mib=900 + step,
              gpu_mib=None)
    j.add("attempt_end", 29, 2, exit={"code": 0, "signal": None, "oom_killed": False, "detail": "exited 0"},
          failure=None, last_step=12, duration_s=12, startup_s=2, stack_dumps=[], peak_rss_mib=912, peak_gpu_mib=None)
    j.add("decision", 29, 2, action="done", reason="all 12 steps done", remedy=None, new_plan=None, plan_diff={},
          experiment_changed=False)
    j.add("run_end", 30, 2, state="SUCCEEDED", reason="all 12 steps done", steps_done=12, total_steps=12, wall_s=30.0)
    j.write(root / "ops" / "journal.jsonl", torn_tail=True)
    (root / "ops" / "stacks").mkdir(parents=True, exist_ok=True)
    (root / "ops" / "stacks" / "attempt-1-4242.txt").write_text("Thread 4242 (idle): \"MainThread\"\n")
    _metrics(root / "exp_001", 1, range(1, 6), launch_mono=2)
    _metrics(root / "exp_002", 2, range(4, 13), launch_mono=17)
    for step in (9, 12):               # keep_top_k=2 (+ latest) left these
        _checkpoint(root / f"step_{step}", step)
    log = ["### grpo-ops attempt 1 2025-11-24T16:00:02Z ###"] + [f"Saving checkpoint for step {s}..." for s in (3,)]
    log += ["### grpo-ops attempt 2 2025-11-24T16:00:17Z ###"] + [f"Saving checkpoint for step {s}..." for s in (6, 9, 12)]
    (root / "output.log").write_text("\n".join(log) + "\n")
    return root


def _metrics(exp_dir: Path, attempt: int, steps, launch_mono: float) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in steps:
        t = T0 + launch_mono + (3 if attempt == 1 else 2) + (step - (0 if attempt == 1 else 3))
        rows.append({"step": step, "time": t, "train/reward": reward_at(step), "train/loss": 0.01,
                     "timing/train/total_step_time": 1.0, "memory/peak_mib": 800.0 + 100 * attempt + step})
        if step % 3 == 0:
            rows.append({"step": step, "validation/accuracy": accuracy_at(step), "validation/avg_length": 7.0})
    (exp_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _checkpoint(path: Path, step: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "training_info.json").write_text(json.dumps({"current_step": step, "val:accuracy": accuracy_at(step)}))
    (path / "config.yaml").write_text(CONFIG_YAML)


SECRET = "hf_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123"


def oom_give_up(root: Path, run_id: str = "20251124/embedded/grpo_oom_001") -> Path:
    """Two CUDA OOMs at step 3 (micro batch 4, then 2), then give up: FAILED_OOM. An evidence line
    carries a token-shaped secret that must never reach the report."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "plan.yaml"
    cfg.write_text(CONFIG_YAML)
    plans = [{"config_path": str(cfg), "overrides": [f"++policy.train_micro_batch_size={mb}"]} for mb in (4, 2)]
    j = JournalWriter(run_id)
    j.add("run_start", 0, 0, trainer="embedded", plan=plans[0], argv=["ops", "run"], budget="2 attempts",
          total_steps=12, supervisor_pid=1, host="h")
    mono = 1.0
    for n, plan in enumerate(plans, start=1):
        j.add("attempt_start", mono, n, plan=plan, argv=["python"], env={}, handle={"pid": 10 + n},
              resume_from_step=None)
        for step in (1, 2):
            j.add("progress", mono + 1 + step, n, step=step, total_steps=12, reward=0.1 * step, accuracy=None,
                  step_time_s=1.0, rss_mib=1000.0 * n, gpu_mib=70000.0)
        j.add("attempt_end", mono + 5, n,
              exit={"code": 1, "signal": None, "oom_killed": False, "detail": "exited 1"},
              failure={"kind": "cuda_oom", "summary": "CUDA out of memory: tried 2.00 GiB, 0.50 GiB free",
                       "deterministic": False, "phase": "training",
                       "numbers": {"tried_gib": 2.0, "free_gib": 0.5, "total_gib": 79.2},
                       "evidence_lines": [f"torch.OutOfMemoryError: CUDA out of memory. HF_TOKEN={SECRET}"]},
              last_step=2, duration_s=5, startup_s=1, stack_dumps=[], peak_rss_mib=1000.0 * n,
              peak_gpu_mib=79000.0)
        if n == 1:
            j.add("decision", mono + 5, n, action="relaunch", reason="CUDA OOM in training", remedy="micro_batch",
                  new_plan=plans[1], plan_diff={"policy.train_micro_batch_size": [4, 2]}, experiment_changed=False)
        else:
            j.add("decision", mono + 5, n, action="give_up", reason="OOM budget exhausted (2 attempts)",
                  remedy=None, new_plan=None, plan_diff={}, experiment_changed=False)
        mono += 6
    j.add("run_end", mono, 2, state="FAILED_OOM", reason="OOM budget exhausted (2 attempts)", steps_done=2,
          total_steps=12, wall_s=mono)
    j.write(root / "ops" / "journal.jsonl")
    return root
