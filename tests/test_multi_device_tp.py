"""Issue 9 on CPU: a per-device OOM at TP=1 recovered by raising tensor parallelism.

The pure part: the embedded workload's per-rank "device" OOM line is a device OOM (not a host OOM), and the
planner answers it with TP x2, keeping the global batch. The e2e part (slow) runs bench/multi_gpu_tp.py on
CPU: gloo ranks, each in its own memory cgroup standing for one device; a short TP=1 warm-up at a short
sequence length leaves a checkpoint; `ops run` at the full length is OOM-killed at TP=1 and must relaunch at
TP=2 with the same global batch, resume from the checkpoint and succeed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.backends.base import Exit
from ops.classify import Evidence, classify
from ops.journal import read_journal
from ops.remedies import PastAttempt, PlanContext, Relaunch, next_plan
from training.embedded import EmbeddedTrainer
from training.spec import Plan

ROOT = Path(__file__).resolve().parent.parent
RANK_OOM = ("grpo-ops: rank 0 (pid 4242) was killed by SIGKILL: Memory cgroup out of memory "
            "(limit 560 MiB, oom_kill=1)")
LINES = ("▶ Computing logprobs...", "▶ Preparing for training...", "▶ Training policy...", RANK_OOM)


def test_rank_device_oom_is_a_device_oom_not_a_host_oom():
    f = classify(Evidence(lines=LINES, exit=Exit(137)), EmbeddedTrainer().signatures)
    assert (f.kind, f.family, f.phase, f.deterministic) == ("device_oom", "oom", "training", False)
    assert RANK_OOM in f.evidence_lines


def test_plain_sigkill_of_a_rank_stays_a_host_oom():
    line = "grpo-ops: rank 1 (pid 4243) was killed by SIGKILL"          # no cgroup OOM counted
    f = classify(Evidence(lines=("▶ Training policy...", line), exit=Exit(137)), EmbeddedTrainer().signatures)
    assert f.kind == "host_oom"


def test_attempt_cgroup_oom_kill_stays_a_host_oom():
    # --memory-limit-mib's attempt cgroup counted the kill: the host limit, which more ranks cannot fix.
    f = classify(Evidence(lines=LINES, exit=Exit(137, oom_killed=True), oom_kills=1, memory_limit_mib=4000.0),
                 EmbeddedTrainer().signatures)
    assert f.kind == "host_oom"


def _decide(f, overrides=()):
    spec = EmbeddedTrainer()
    plan = Plan(spec.default_config(), tuple(overrides))
    cfg = spec.resolve(plan)
    ctx = PlanContext(tuple(spec.knobs), cfg, lambda c: spec.constraint_violations(c, None),
                      {"static_mib": 1.6, "per_sample_mib": 68.7, "device": "cpu", "tp": 1})
    return next_plan(f, plan, [PastAttempt(plan, f.kind, 2)], ctx), cfg


def test_device_oom_raises_tp_and_keeps_the_global_batch():
    f = classify(Evidence(lines=LINES, exit=Exit(137)), EmbeddedTrainer().signatures)
    d, cfg = _decide(f, ("++policy.model.num_heads=16",))
    assert isinstance(d, Relaunch) and d.remedy == "tp" and not d.experiment_changed
    assert dict(d.plan_diff) == {"policy.dtensor_cfg.tensor_parallel_size": (1, 2)}
    new = EmbeddedTrainer().resolve(d.plan)
    assert new["policy"]["train_global_batch_size"] == cfg["policy"]["train_global_batch_size"]
    assert new["policy"]["train_micro_batch_size"] == cfg["policy"]["train_micro_batch_size"]


def test_host_oom_of_the_same_attempt_shrinks_the_micro_batch_instead():
    f = classify(Evidence(lines=LINES[:3], exit=Exit(137)), EmbeddedTrainer().signatures)
    d, _ = _decide(f)
    assert f.kind == "host_oom" and isinstance(d, Relaunch) and d.remedy == "micro_batch"


def _finish_then_abort_at_exit(rank, world, backend):
    import atexit
    atexit.register(os.abort)      # a teardown abort at exit, as a joinable c10d/gloo thread causes (SIGABRT)


def _raise_in_rank(rank, world, backend):
    raise RuntimeError(f"rank {rank} failed")


def test_a_finished_rank_is_not_failed_by_exit_time_teardown():
    from training.grpo.parallel import run_ranks
    assert run_ranks(_finish_then_abort_at_exit, 2, "gloo", (), None) == 0
    assert run_ranks(_raise_in_rank, 2, "gloo", (), None) == 1


def _rank_cgroups_work() -> bool:
    """The workload can make a limited child memory cgroup here (root, v1 or a delegating v2 hierarchy)."""
    from training.grpo.parallel import make_rank_cgroup, remove_cgroup
    try:
        remove_cgroup(make_rank_cgroup(99, 64))
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.skipif(not _rank_cgroups_work(), reason="needs root and a writable memory cgroup (per-rank limits)")
def test_cpu_tp1_device_oom_recovers_at_tp2_from_the_checkpoint(tmp_path):
    out_json = tmp_path / "figures.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPO_OPS_ENABLE_FAULTS": ""}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "multi_gpu_tp.py"), "--device", "cpu",
                        "--work", str(tmp_path), "--json-out", str(out_json), "--skip-preflight"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1400)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    fig = json.loads(out_json.read_text())
    recs = read_journal(Path(fig["run_dir"]) / "ops" / "journal.jsonl")
    kind = lambda k: [r for r in recs if r["kind"] == k]              # noqa: E731

    starts, ends, decisions = kind("attempt_start"), kind("attempt_end"), kind("decision")
    warm = fig["warmup_step"]
    assert warm >= 1 and [s["resume_from_step"] for s in starts] == [warm, warm]
    first = ends[0]
    assert first["failure"]["kind"] == "device_oom" and first["failure"]["family"] == "oom"
    assert first["exit"]["code"] == 137 and first["last_step"] in (None, warm)
    relaunch = decisions[0]
    assert relaunch["action"] == "relaunch" and relaunch["remedy"] == "tp"
    assert relaunch["plan_diff"] == {"policy.dtensor_cfg.tensor_parallel_size": [1, 2]}
    assert relaunch["experiment_changed"] is False
    assert ends[1]["failure"] is None and decisions[1]["action"] == "done"
    end = kind("run_end")[0]
    assert end["state"] == "SUCCEEDED" and end["steps_done"] == fig["total_steps"] == end["total_steps"]
    steps = [r["step"] for r in kind("progress")]
    assert steps == list(range(warm + 1, fig["total_steps"] + 1))     # continued from the checkpoint
    assert not [w for w in kind("warning") if "did not continue" in w.get("message", "")]

    # The same global batch, the same micro batch: only TP changed. The per-device figures are real.
    assert fig["global_batch"]["before"] == fig["global_batch"]["after"]
    assert fig["tp"] == {"before": 1, "after": 2} and fig["retries"] == 1
    after = fig["device_peak_mib"]["after"]
    assert len(after) == 2 and all(0 < v <= fig["device_limit_mib"] for v in after.values())
    assert fig["oom"]["limit_mib"] == fig["device_limit_mib"] and fig["time_to_recover_s"] > 0
