"""Helpers for the embedded workload's tests: launch `python -m training.grpo` as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ("grpo.num_prompts_per_step=4", "grpo.num_generations_per_prompt=4", "policy.train_micro_batch_size=4",
         "policy.logprob_batch_size=8", "grpo.val_period=2", "checkpointing.save_period=2",
         "grpo.max_val_samples=16", "grpo.val_at_start=false")


def argv(tmp: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "training.grpo", "--device=cpu", *SMALL, *overrides,
            f"++checkpointing.checkpoint_dir={tmp / 'ckpt'}", f"++logger.log_dir={tmp / 'logs'}"]


def env(faults: bool = False) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "GRPO_OPS_ENABLE_FAULTS"}
    e["PYTHONPATH"] = str(REPO)
    e["PYTHONUNBUFFERED"] = "1"
    if faults:
        e["GRPO_OPS_ENABLE_FAULTS"] = "1"
    return e


def run(tmp: Path, *overrides: str, faults: bool = False, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(argv(tmp, *overrides), cwd=tmp, env=env(faults), capture_output=True, text=True,
                          timeout=timeout)


def start(tmp: Path, *overrides: str, faults: bool = False) -> subprocess.Popen:
    out = open(tmp / "out.txt", "w")
    return subprocess.Popen(argv(tmp, *overrides), cwd=tmp, env=env(faults), stdout=out, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def wait_for(predicate, timeout: float = 180, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def steps(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"^={25} Step (\d+)/(\d+) ={25}$", text, re.M)]


def floats(text: str, label: str) -> list[float]:
    return [float(x) for x in re.findall(rf"• {label}: (-?[\d.]+)", text)]


def metrics(tmp: Path) -> list[dict]:
    rows = []
    for f in sorted((tmp / "logs").glob("exp_*/metrics.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines()]
    return rows
