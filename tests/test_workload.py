"""The embedded GRPO workload as real processes: log lines, checkpoints, resume, determinism, errors."""

from __future__ import annotations

import json
import re

import pytest

from workload_support import floats, kill_group, metrics, run, start, steps, wait_for


def test_a_few_steps_print_nemo_rl_lines_and_write_metrics_and_checkpoints(tmp_path):
    p = run(tmp_path, "grpo.max_num_steps=4", "grpo.val_at_start=true")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.startswith("Loaded configuration from: ")
    for line in ("Overrides: [", "📊 Using log directory: ", "📊 Using checkpoint directory: ", "SETUP COMPLETE",
                 "🚀 Running synchronous GRPO training", "🔍 Running initial validation...",
                 "▶ Generating responses for batch of size 16...", "▶ Computing logprobs...", "▶ Training policy...",
                 "Saving checkpoint for step 2...", "▶ Starting validation at step 4...", "⏱️  Timing:",
                 "Max number of steps has been reached, stopping training early"):
        assert line in out, line
    assert steps(out) == [(1, 4), (2, 4), (3, 4), (4, 4)]
    m = re.search(r"^grpo-ops: memory model: static_mib=([\d.]+) per_sample_mib=([\d.]+) device=cpu tp=1 "
                  r"base_mib=\d+$", out, re.M)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0
    rewards, accs = floats(out, "Avg Reward"), floats(out, "Accuracy")
    assert len(rewards) == 4 and all(0.0 <= r <= 1.0 for r in rewards)
    assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs)          # steps 0, 2, 4
    assert len(re.findall(r"• Total step time: \d+\.\d\ds", out)) == 4
    rows = metrics(tmp_path)
    train = [r for r in rows if "train/reward" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [round(r["train/reward"], 4) for r in train] == rewards
    for key in ("train/loss", "train/grad_norm", "train/mean_gen_tokens_per_sample", "timing/train/total_step_time",
                "memory/peak_mib"):
        assert key in train[0], key
    assert [r["step"] for r in rows if "validation/accuracy" in r] == [0, 2, 4]
    ckpt = tmp_path / "ckpt"
    assert sorted(c.name for c in ckpt.iterdir() if c.name.startswith("step_")) == ["step_2", "step_4"]
    for f in ("training_info.json", "config.yaml", "policy/weights/model.pt", "policy/optimizer/optimizer.pt"):
        assert (ckpt / "step_4" / f).is_file(), f
    info = json.loads((ckpt / "step_4" / "training_info.json").read_text())
    assert info["total_steps"] == 4 and info["val:accuracy"] == pytest.approx(accs[-1], abs=1e-4)
    assert json.loads((ckpt / "latest_checkpoint_status.json").read_text())["last_checkpoint_step"] == 4


def test_killed_after_step_4_checkpoint_resumes_at_step_5_and_ends_at_6(tmp_path):
    proc = start(tmp_path, "grpo.max_num_steps=6", "++fault.hang_at_step=5", faults=True)
    try:
        assert wait_for(lambda: "Step 5/6" in (tmp_path / "out.txt").read_text()), (tmp_path / "out.txt").read_text()
        assert (tmp_path / "ckpt" / "step_4" / "training_info.json").is_file()
        assert proc.poll() is None                           # really blocked, not exited
    finally:
        kill_group(proc)
    p = run(tmp_path, "grpo.max_num_steps=6", "++fault.hang_at_step=5", faults=True)   # fault fired already
    assert p.returncode == 0, p.stderr
    assert steps(p.stdout) == [(5, 6), (6, 6)]
    assert "Loaded checkpoint from" in p.stdout and "🔍 Running initial validation" not in p.stdout
    assert sorted(d.name for d in (tmp_path / "logs").iterdir()) == ["exp_001", "exp_002"]
    assert [r["step"] for r in metrics(tmp_path) if "train/reward" in r] == [1, 2, 3, 4, 5, 6]
    assert json.loads((tmp_path / "ckpt" / "step_6" / "training_info.json").read_text())["total_steps"] == 6


def test_kill_during_save_leaves_tmp_step_that_resume_ignores(tmp_path):
    proc = start(tmp_path, "grpo.max_num_steps=4", "++fault.slow_save_s=120", faults=True)
    try:
        assert wait_for(lambda: (tmp_path / "ckpt" / "tmp_step_2" / "policy" / "weights" / "model.pt").exists())
    finally:
        kill_group(proc)
    assert not (tmp_path / "ckpt" / "step_2").exists()
    p = run(tmp_path, "grpo.max_num_steps=4")
    assert p.returncode == 0, p.stderr
    assert steps(p.stdout)[0] == (1, 4) and "Loaded checkpoint" not in p.stdout
    names = sorted(c.name for c in (tmp_path / "ckpt").iterdir() if "step_" in c.name)
    assert names == ["step_2", "step_4"]                    # the stale tmp_step_2 was removed by the next save


def test_bad_override_key_gives_nemo_rl_error_and_exit_2(tmp_path):
    p = run(tmp_path, "grpo.no_such_knob=3")
    assert p.returncode == 2
    assert p.stderr.strip() == ("OverridesError: Failed to parse Hydra overrides: Could not override "
                                "'grpo.no_such_knob'.\nTo append to your config use +grpo.no_such_knob=3")
    assert "Traceback" not in p.stderr and not (tmp_path / "logs").exists()


def test_bad_plan_is_one_line_naming_the_value(tmp_path):
    p = run(tmp_path, "policy.train_micro_batch_size=5")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "policy.train_micro_batch_size * DP (5 * 1)" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_same_seed_same_result_on_cpu(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pa, pb = run(a, "grpo.max_num_steps=3"), run(b, "grpo.max_num_steps=3")
    assert pa.returncode == pb.returncode == 0
    keys = ("train/reward", "train/loss", "train/grad_norm")
    ma = [[r[k] for k in keys] for r in metrics(a) if "train/reward" in r]
    mb = [[r[k] for k in keys] for r in metrics(b) if "train/reward" in r]
    assert len(ma) == 3 and ma == mb
    assert ma[0] != ma[1]                                   # it did train: the numbers move step to step


def test_faults_are_refused_without_the_enable_variable(tmp_path):
    p = run(tmp_path, "++fault.crash_at_step=1")
    assert p.returncode == 2
    assert p.stderr.strip() == ("fault injection requested (fault.crash_at_step=1) but GRPO_OPS_ENABLE_FAULTS=1 "
                                "is not set")


def test_crash_fault_is_a_real_traceback_and_fires_once(tmp_path):
    p = run(tmp_path, "grpo.max_num_steps=4", "++fault.crash_at_step=3", faults=True)
    assert p.returncode == 1
    assert "Traceback (most recent call last)" in p.stderr
    assert "RuntimeError: grpo-ops fault injection: crash at step 3" in p.stderr
    p = run(tmp_path, "grpo.max_num_steps=4", "++fault.crash_at_step=3", faults=True)
    assert p.returncode == 0 and steps(p.stdout) == [(3, 4), (4, 4)]
