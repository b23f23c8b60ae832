"""End-to-end: `ops run` on the embedded GRPO workload (real torch training) with real faults.

Each test keeps the run short with overrides (few steps); faults need GRPO_OPS_ENABLE_FAULTS=1.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cgroup_support import needs_memory_cgroup
from ops.journal import read_journal

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--skip-preflight", "--grace-s", "3", "--startup-timeout-s", "240"]
pytestmark = pytest.mark.slow


def env(faults=True):
    e = {**os.environ, "PYTHONPATH": str(ROOT), "GRPO_OPS_ENABLE_FAULTS": "1" if faults else ""}
    if not faults:
        e.pop("GRPO_OPS_ENABLE_FAULTS")
    return e


def ops(tmp_path, *args, faults=True, timeout=600):
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=tmp_path, env=env(faults),
                          capture_output=True, text=True, timeout=timeout)


def journal(tmp_path, exp):
    return read_journal(tmp_path / "results" / exp / "ops" / "journal.jsonl")


def kind(recs, k):
    return [r for r in recs if r["kind"] == k]


def marked(run_id):
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            environ = open(f"/proc/{p.pid}/environ", "rb").read().split(b"\0")
            if f"GRPO_OPS_RUN_ID={run_id}".encode() in environ and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (OSError, psutil.Error):
            continue
    return out


def test_no_arguments_runs_default_config_to_success(tmp_path):
    p = ops(tmp_path, "run", faults=False, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    assert "SUCCEEDED after 1 attempt(s)" in p.stdout
    exp = p.stdout.split(":")[0]
    assert exp.split("/")[1:] == ["embedded", "grpo_workplace_tiny_001"]
    recs = journal(tmp_path, exp)
    assert kind(recs, "preflight") == [] and any(r.get("what") == "preflight" for r in kind(recs, "eval"))
    prog = kind(recs, "progress")
    assert prog[-1]["step"] == prog[-1]["total_steps"] and prog[-1]["reward"] is not None


@needs_memory_cgroup
def test_cgroup_oom_kill_relaunched_smaller_and_finishes(tmp_path):
    p = ops(tmp_path, "run", *FAST, "--exp", "oom", "--memory-limit-mib", "700", "--",
            "++grpo.max_num_steps=2", "++grpo.val_at_start=false", "++fault.alloc_mib=30")
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    recs = journal(tmp_path, "oom")
    end = kind(recs, "attempt_end")[0]
    assert end["failure"]["kind"] == "host_oom" and end["exit"]["oom_killed"] is True
    dec = kind(recs, "decision")[0]
    assert dec["remedy"] == "micro_batch" and not dec["experiment_changed"]
    old, new = dec["plan_diff"]["policy.train_micro_batch_size"]
    assert old == 16 and new < 16
    assert kind(recs, "run_end")[0]["state"] == "SUCCEEDED"
    assert not list(Path("/sys/fs/cgroup/memory/grpo-ops").glob("oom/attempt-*"))


def test_hang_detected_stacks_saved_relaunched(tmp_path):
    p = ops(tmp_path, "run", *FAST, "--exp", "hang", "--hang-floor-s", "6", "--hang-factor", "2", "--",
            "++grpo.max_num_steps=4", "++grpo.val_at_start=false", "++fault.hang_at_step=3")
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    recs = journal(tmp_path, "hang")
    end = kind(recs, "attempt_end")[0]
    assert end["failure"]["kind"] == "hang" and end["stack_dumps"]
    dumps = [(tmp_path / "results" / "hang" / d).read_text() for d in end["stack_dumps"]]
    assert any("training/grpo" in d or "training.grpo" in d for d in dumps)
    assert kind(recs, "decision")[0]["remedy"] == "retry_same"
    assert kind(recs, "run_end")[0]["state"] == "SUCCEEDED"


def test_crash_resumes_from_checkpoint(tmp_path):
    p = ops(tmp_path, "run", *FAST, "--exp", "crash", "--", "++grpo.max_num_steps=4", "++grpo.val_at_start=false",
            "++checkpointing.save_period=1", "++fault.crash_at_step=3")
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    recs = journal(tmp_path, "crash")
    assert "crash at step 3" in kind(recs, "attempt_end")[0]["failure"]["summary"]
    assert kind(recs, "attempt_start")[1]["resume_from_step"] == 2
    assert not [w for w in kind(recs, "warning") if "did not continue" in w.get("message", "")]
    steps = [r["step"] for r in kind(recs, "progress")]
    assert steps == [1, 2, 3, 4]


def test_deterministic_error_ends_at_once(tmp_path):
    p = ops(tmp_path, "run", *FAST, "--exp", "det", "--", "++grpo.max_num_steps=2", "++fault.crash_at_step=1",
            faults=False)
    assert p.returncode == 1
    recs = journal(tmp_path, "det")
    assert len(kind(recs, "attempt_start")) == 1
    end = kind(recs, "run_end")[0]
    assert end["state"] == "FAILED_CONFIG" and "GRPO_OPS_ENABLE_FAULTS=1" in end["reason"]
    bad = ops(tmp_path, "run", *FAST, "--exp", "det2", "--", "grpo.no_such_key=1")
    assert bad.returncode == 1 and "FAILED_CONFIG" in bad.stdout and "no_such_key" in bad.stdout


def test_sigterm_leaves_no_process_of_the_tree(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "run", *FAST, "--exp", "term", "--",
                             "++grpo.max_num_steps=500", "++policy.dtensor_cfg.tensor_parallel_size=2"],
                            cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "results" / "term" / "ops" / "state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if state.exists() and (json.loads(state.read_text()).get("step") or 0) >= 1:
            break
        time.sleep(0.5)
    assert len(marked("term")) >= 3                  # launcher + 2 ranks
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "CANCELLED" in out, err[-2000:]
    assert not marked("term")
