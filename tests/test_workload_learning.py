"""The default config learns (reward and held-out accuracy rise), and W&B offline logging works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workload_support import env, metrics


@pytest.mark.slow
def test_default_config_learns_visibly(tmp_path):
    # The default config itself (not the small test overrides), cut to 150 of its 250 steps.
    argv = [sys.executable, "-m", "training.grpo", "--device=cpu", "grpo.max_num_steps=150", "grpo.val_period=50",
            "checkpointing.enabled=false", f"++logger.log_dir={tmp_path / 'logs'}",
            f"++checkpointing.checkpoint_dir={tmp_path / 'ckpt'}"]
    p = subprocess.run(argv, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    rows = metrics(tmp_path)
    rewards = [r["train/reward"] for r in rows if "train/reward" in r]
    acc = {r["step"]: r["validation/accuracy"] for r in rows if "validation/accuracy" in r}
    assert len(rewards) == 150
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.3, rewards
    assert acc[150] > acc[0] + 0.15, acc


def test_wandb_offline_run_lands_in_the_experiment_dir(tmp_path):
    e = env()
    e["WANDB_MODE"] = "offline"
    e.pop("WANDB_API_KEY", None)
    argv = [sys.executable, "-m", "training.grpo", "--device=cpu", "grpo.max_num_steps=1", "grpo.val_at_start=false",
            "grpo.num_prompts_per_step=4", "grpo.num_generations_per_prompt=4", "policy.train_micro_batch_size=4",
            "checkpointing.enabled=false", "logger.wandb_enabled=true", f"++logger.log_dir={tmp_path / 'logs'}",
            f"++checkpointing.checkpoint_dir={tmp_path / 'ckpt'}"]
    p = subprocess.run(argv, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    runs = list((tmp_path / "logs" / "exp_001" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
