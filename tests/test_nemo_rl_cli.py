"""`ops run --trainer nemo-rl --dry-run` and `ops diagnose --trainer nemo-rl` as a user runs them."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from healthchecks.fake_gpu import FakeGpuReader
from nemo_support import WORKPLACE, build_cache, model_files
from nemo_transcripts import CASES

ROOT = Path(__file__).resolve().parents[1]
KEY = "0123456789abcdef0123456789abcdef0123abcd"
TOKEN = "hf_" + "Secr3t" * 5


@pytest.fixture
def site(tmp_path):
    (tmp_path / "RL" / "examples" / "nemo_gym").mkdir(parents=True)
    shutil.copy(WORKPLACE, tmp_path / "RL" / "examples" / "nemo_gym" / WORKPLACE.name)
    build_cache(tmp_path / "hf" / "hub", model_files(shards=2))
    FakeGpuReader.healthy(8).dump(tmp_path / "gpu.json")
    return tmp_path


def ops(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HF_HOME": str(site / "hf"),
            "GRPO_OPS_FAKE_GPU": str(site / "gpu.json"), **env}
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=full, capture_output=True, text=True,
                          timeout=120, cwd=site)


def test_dry_run_prints_command_environment_and_ladder(site):
    out = ops(site, "run", "--trainer", "nemo-rl", "--repo", "RL", "--exp", "night1", "--dry-run", "--",
              "++grpo.max_num_steps=3", WANDB_API_KEY=KEY, HF_TOKEN=TOKEN,
              PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert KEY not in text + out.stderr and TOKEN not in text + out.stderr
    results = site / "results" / "night1"
    assert f"cd {site / 'RL'}" in text
    cmd = next(ln for ln in text.splitlines() if ln.startswith("uv run python"))
    assert cmd.startswith("uv run python examples/nemo_gym/run_grpo_nemo_gym.py "
                          f"--config={site / 'RL/examples/nemo_gym' / WORKPLACE.name} ++grpo.max_num_steps=3 "
                          f"++logger.log_dir={results} ++checkpointing.checkpoint_dir={results} "
                          "++policy.generation.vllm_cfg.tool_parser_plugin=")
    assert re.search(r"tool_parser_plugin=\S+/snapshots/\S+/nemotron_toolcall_parser_no_streaming\.py", cmd)
    for line in ("TORCH_CUDA_ARCH_LIST=9.0", "HF_HUB_OFFLINE=1", "NRL_FORCE_REBUILD_VENVS=true",
                 f"HF_HOME={site / 'hf'}", "passed through, redacted: WANDB_API_KEY, HF_TOKEN",
                 "TP 2 x PP 1 x CP 1 -> DP 4", "1. tp: policy.megatron_cfg.tensor_model_parallel_size",
                 "removed PYTORCH_CUDA_ALLOC_CONF"):
        assert line in text, line
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable" not in text.replace("removed PYTORCH_CUDA_ALLOC_CONF=expandable", "")
    assert not (site / "results" / "night1" / "output.log").exists()          # a dry run starts nothing


def test_dry_run_without_wandb_key_and_with_deadline(site):
    at = (dt.datetime.now() + dt.timedelta(hours=3)).strftime("%H:%M")
    out = ops(site, "run", "--trainer", "nemo-rl", "--repo", "RL", "--exp", "night2", "--dry-run",
              "--deadline", at)
    assert out.returncode == 0, out.stderr
    assert "++logger.wandb_enabled=false" in out.stdout
    m = re.search(r"\+\+checkpointing\.checkpoint_must_save_by=(\d\d):(\d\d):(\d\d):(\d\d)", out.stdout)
    assert m, out.stdout
    days, hours, minutes, _ = map(int, m.groups())
    assert days == 0 and 2 * 60 <= hours * 60 + minutes <= 3 * 60          # ~3 h minus the 15 min save margin


def test_diagnose_with_config_gives_the_nemo_remedy(site):
    case = next(c for c in CASES if c.name == "vllm_cumem_wakeup_oom")
    log = site / "output.log"
    log.write_text("\n".join(case.lines) + "\n")
    out = ops(site, "diagnose", str(log), "--trainer", "nemo-rl", "--repo", "RL", "--json",
              "--config", str(site / "RL/examples/nemo_gym" / WORKPLACE.name))
    data = json.loads(out.stdout)
    assert data["failure"]["kind"] == "vllm_oom" and data["failure"]["phase"] == "generation"
    assert data["remedy"]["action"] == "relaunch"
    assert data["remedy"]["plan_diff"] == {"policy.generation.vllm_cfg.gpu_memory_utilization": [0.8, 0.7]}


def test_preflight_json_carries_the_plan_and_the_plus_plus_fix(site):
    cfg = str(site / "RL/examples/nemo_gym" / WORKPLACE.name)
    out = ops(site, "preflight", "--trainer", "nemo-rl", "--config", cfg, "--only",
              "hf_cache,tool_parser_plugin,training_config", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["results"]}
    assert rows["training_config"]["data"]["plan"]["dp"] == 4 and rows["hf_cache"]["status"] == "PASS"
    bad = ops(site, "preflight", "--trainer", "nemo-rl", "--config", cfg, "--only", "training_config", "--json", "--",
              "policy.generation.vllm_cfg.tool_parser_plugin=/p.py")
    # A bad override is the training_config check's FAIL (exit 1) in NeMo RL's own words, with the ++ fix.
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "Could not override 'policy.generation.vllm_cfg.tool_parser_plugin'" in bad.stdout
    assert "++policy.generation.vllm_cfg.tool_parser_plugin=/p.py" in bad.stdout


def test_run_preflight_sees_the_arch_list_the_launch_sets(tmp_path, monkeypatch):
    """`ops run --trainer nemo-rl` sets TORCH_CUDA_ARCH_LIST from the GPUs, so its preflight must not FAIL
    cuda_arch because this shell lacks it."""
    from healthchecks.fake_gpu import FakeGpuReader
    from ops.cmd_run import _preflight_runner
    from training.nemo_rl import NemoRLTrainer
    from training.spec import Plan, RunPaths

    monkeypatch.setenv("GRPO_OPS_FAKE_GPU", str(FakeGpuReader.healthy(1).dump(tmp_path / "gpu.json")))
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    repo = tmp_path / "RL"
    (repo / "examples/nemo_gym").mkdir(parents=True)
    cfg = repo / "examples/nemo_gym" / WORKPLACE.name
    cfg.write_text(WORKPLACE.read_text())
    run = _preflight_runner(NemoRLTrainer(repo=repo), Plan(cfg, ("cluster.gpus_per_node=1",
                            "policy.megatron_cfg.tensor_model_parallel_size=1")),
                            RunPaths(tmp_path / "results" / "e"), tmp_path / "results", 1)
    ok, lines = run()
    assert not [ln for ln in lines if ln.startswith("FAIL cuda_arch")], lines
