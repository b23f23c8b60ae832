"""Tensor parallelism and memory of the embedded workload, for real: gloo ranks, cgroup OOM kills, RSS."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import psutil
import pytest

from workload_support import floats, kill_group, metrics, run, start, steps, wait_for

from training.grpo.parallel import own_memory_cgroup


def _memory_model(out: str) -> dict[str, str]:
    line = re.search(r"^grpo-ops: memory model: (.*)$", out, re.M).group(1)
    return dict(kv.split("=") for kv in line.split())


def test_tp2_shards_the_model_and_matches_tp1(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    p1 = run(one, "grpo.max_num_steps=2")
    p2 = run(two, "grpo.max_num_steps=2", "policy.dtensor_cfg.tensor_parallel_size=2")
    assert p1.returncode == 0 and p2.returncode == 0, p2.stderr
    m1, m2 = _memory_model(p1.stdout), _memory_model(p2.stdout)
    assert m2["tp"] == "2" and float(m2["static_mib"]) < float(m1["static_mib"])
    assert float(m2["per_sample_mib"]) < float(m1["per_sample_mib"])
    # Same seed, same unsharded init: the sharded math gives the same samples and (nearly) the same loss.
    assert floats(p1.stdout, "Avg Reward") == floats(p2.stdout, "Avg Reward")
    l1 = [r["train/loss"] for r in metrics(one) if "train/loss" in r]
    l2 = [r["train/loss"] for r in metrics(two) if "train/loss" in r]
    assert l1 == pytest.approx(l2, rel=1e-3, abs=1e-5)
    assert steps(p2.stdout) == [(1, 2), (2, 2)]             # rank 0 alone prints


def test_checkpoint_from_tp2_resumes_under_tp1(tmp_path):
    p = run(tmp_path, "grpo.max_num_steps=2", "policy.dtensor_cfg.tensor_parallel_size=2")
    assert p.returncode == 0, p.stderr
    p = run(tmp_path, "grpo.max_num_steps=3")
    assert p.returncode == 0, p.stderr
    assert "Loaded checkpoint" in p.stdout and steps(p.stdout) == [(3, 3)]


def test_tp_must_divide_heads(tmp_path):
    p = run(tmp_path, "policy.dtensor_cfg.tensor_parallel_size=3")
    assert p.returncode == 2
    assert "policy.model.num_heads (4) must be divisible by policy.dtensor_cfg.tensor_parallel_size (3)" in p.stderr


def _can_make_cgroups() -> bool:
    found = own_memory_cgroup()
    return os.geteuid() == 0 and found is not None and os.access(found[0], os.W_OK)


@pytest.mark.skipif(not _can_make_cgroups(), reason="needs root and a writable memory cgroup")
def test_too_large_plan_is_oom_killed_in_the_rank_memory_cgroup(tmp_path):
    p = run(tmp_path, "grpo.max_num_steps=2", "++cluster.cpu_device_memory_mib=700", "++fault.alloc_mib=250",
            faults=True)
    assert p.returncode == 137
    assert re.search(r"grpo-ops: rank 0 \(pid \d+\) was killed by SIGKILL: Memory cgroup out of memory "
                     r"\(limit 700 MiB, oom_kill=[1-9]", p.stderr), p.stderr
    assert "Traceback" not in p.stderr
    parent = own_memory_cgroup()[0]
    assert not [c for c in Path(parent).iterdir() if c.name.startswith("grpo-ops-")]   # cleaned up
    # The same plan with a smaller per-sample load fits under the same limit.
    ok = run(tmp_path, "grpo.max_num_steps=2", "++cluster.cpu_device_memory_mib=700",
             faults=True)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
def test_peak_memory_grows_with_micro_batch_and_falls_with_tp_and_act_ckpt(tmp_path):
    big = ("policy.model.hidden_size=128", "policy.model.num_heads=8", "policy.max_total_sequence_length=192",
           "grpo.num_prompts_per_step=8", "grpo.num_generations_per_prompt=8", "policy.logprob_batch_size=8",
           "grpo.max_num_steps=1", "checkpointing.enabled=false", "grpo.val_period=0")
    peaks = {}
    for name, extra in (("mbs8", ("policy.train_micro_batch_size=8",)),
                        ("mbs64", ("policy.train_micro_batch_size=64",)),
                        ("mbs64_tp2", ("policy.train_micro_batch_size=64",
                                       "policy.dtensor_cfg.tensor_parallel_size=2")),
                        ("deep", ("policy.train_micro_batch_size=32", "policy.model.num_layers=6")),
                        ("deep_ckpt", ("policy.train_micro_batch_size=32", "policy.model.num_layers=6",
                                       "policy.dtensor_cfg.activation_checkpointing=true"))):
        d = tmp_path / name
        d.mkdir()
        p = run(d, *big, *extra)
        assert p.returncode == 0, p.stderr
        peaks[name] = [r["memory/peak_mib"] for r in metrics(d) if "memory/peak_mib" in r][-1]
        assert float(_memory_model(p.stdout)["per_sample_mib"]) > 1.0
    assert peaks["mbs64"] > peaks["mbs8"] + 150, peaks
    assert peaks["mbs64_tp2"] < peaks["mbs64"] - 100, peaks
    assert peaks["deep_ckpt"] < peaks["deep"] - 120, peaks


def test_hang_under_tp2_blocks_in_a_collective_until_killed(tmp_path):
    proc = start(tmp_path, "grpo.max_num_steps=3", "policy.dtensor_cfg.tensor_parallel_size=2",
                 "++fault.hang_at_step=2", faults=True)
    try:
        out = tmp_path / "out.txt"
        assert wait_for(lambda: "Step 2/3" in out.read_text())
        time.sleep(3)
        assert proc.poll() is None and "Step 3/3" not in out.read_text()
        ranks = psutil.Process(proc.pid).children()
        assert len(ranks) >= 2 and all(r.is_running() for r in ranks)
    finally:
        kill_group(proc)
