"""Goodput of real supervised runs with injected faults: what each failure costs, by bucket.

Runs `ops run` once per scenario (clean, crash, hang, host OOM) on a trainer and prints the report's goodput
and its breakdown (preflight, startup, recomputed, hang_detect, cleanup, other). Prints numbers; asserts
nothing. Trainer "fixture" (tests/supervisor_fixture_trainer.py; seconds) or "embedded" (python -m
training.grpo, real torch training; minutes).

    PYTHONPATH=. .venv/bin/python bench/goodput.py [fixture|embedded]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "fixture": {
        "clean": ["--", "steps=20", "step_s=0.3"],
        "crash@12": ["--", "steps=20", "step_s=0.3", "crash_at=12"],
        "hang@12": ["--hang-floor-s", "3", "--", "steps=20", "step_s=0.3", "hang_at=12"],
        "oom": ["--memory-limit-mib", "200", "--", "steps=20", "step_s=0.3", "mib_per_sample=30"],
    },
    "embedded": {
        "clean": ["--", "grpo.max_num_steps=20", "checkpointing.save_period=5"],
        "crash@12": ["--", "grpo.max_num_steps=20", "checkpointing.save_period=5", "++fault.crash_at_step=12"],
        "hang@12": ["--hang-floor-s", "5", "--", "grpo.max_num_steps=20", "checkpointing.save_period=5",
                    "++fault.hang_at_step=12"],
    },
}


def main() -> None:
    trainer = sys.argv[1] if len(sys.argv) > 1 else "fixture"
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "GRPO_OPS_ENABLE_FAULTS": "1",
           "GRPO_OPS_TRAINERS": "fixture=supervisor_fixture_trainer:FixtureTrainer"}
    env.pop("WANDB_API_KEY", None)
    print(f"trainer {trainer}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
    print(f"{'scenario':10} {'state':10} {'att':>3} {'wall s':>7} {'goodput':>8}  lost (s)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in SCENARIOS[trainer].items():
            exp = f"bench/{name.replace('@', '_at_')}"
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "ops.cli", "run", "--trainer", trainer, "--exp", exp,
                            "--skip-preflight", "--no-wandb", "--grace-s", "2", *args],
                           cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
            p = subprocess.run([sys.executable, "-m", "ops.cli", "report", exp, "--json"], cwd=tmp, env=env,
                               capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                print(f"{name:10} report failed: {p.stderr.strip()[:200]}")
                continue
            r = json.loads(p.stdout)
            g = r["goodput"]
            lost = " ".join(f"{k} {v:.1f}" for k, v in g["lost_s"].items() if v >= 0.05)
            ratio = f"{g['goodput']:.1%}" if g["goodput"] is not None else "n/a"
            print(f"{name:10} {r['verdict']:10} {len(r['attempts']):>3} {g['wall_s']:>7.1f} {ratio:>8}  {lost}"
                  f"   (ops run + report {time.monotonic() - t0:.1f} s)")


if __name__ == "__main__":
    main()
