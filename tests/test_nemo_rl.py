"""NemoRLTrainer on the real NeMo RL configs: loading, effective plan, constraints, launch, remedies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from healthchecks.fake_gpu import FakeGpuReader, h100
from nemo_support import MODEL, NEMO_CONFIGS, WORKPLACE, build_cache, model_files
from ops.classify import Failure
from ops.remedies import GiveUp, PastAttempt, PlanContext, Relaunch, next_plan
from training import nemo_plan
from training.config import ConfigError, load_with_inheritance, resolve
from training.nemo_rl import (DTENSOR_KNOBS, MEGATRON_KNOBS, RUNNER, NemoRLTrainer, arch_list, must_save_by)
from training.spec import Plan, RunPaths

CONFIGS = sorted(NEMO_CONFIGS.glob("*.yaml"))
SECRET_KEY = "0123456789abcdef0123456789abcdef0123beef"
SECRET_TOKEN = "hf_" + "T0k3n" * 6


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_fixture_config_loads(path):
    cfg = resolve(path)
    assert cfg["policy"]["train_global_batch_size"] > 0 and cfg["cluster"]["gpus_per_node"] >= 1
    assert nemo_plan.violations(cfg) == []


def test_three_level_defaults_chain():
    raw = load_with_inheritance(NEMO_CONFIGS / "grpo_math_8B_megatron.yaml")
    cfg = resolve(NEMO_CONFIGS / "grpo_math_8B_megatron.yaml")
    assert "defaults" not in raw
    assert cfg["grpo"]["num_generations_per_prompt"] == 32                  # the child
    assert cfg["policy"]["megatron_cfg"]["pipeline_model_parallel_size"] == 2
    assert cfg["grpo"]["max_val_samples"] == 256                            # the middle (1B megatron)
    assert "loss_fn" in cfg and cfg["loss_fn"]["reference_policy_kl_penalty"] == 0.01
    assert cfg["policy"]["dynamic_batching"]["train_mb_tokens"] == 4096     # ${mul:...} after inheritance


def test_workplace_assistant_on_8_gpus_is_tp2_dp4():
    plan = nemo_plan.effective_plan(resolve(WORKPLACE))
    assert (plan.world_size, plan.tp, plan.pp, plan.cp, plan.dp) == (8, 2, 1, 1, 4)
    assert (plan.generated_batch, plan.train_global_batch, plan.optimizer_steps_per_grpo_step) == (1024, 1024, 1)
    assert (plan.vllm_tp, plan.vllm_engines, plan.vllm_gpu_memory_utilization) == (1, 8, 0.8)
    assert plan.max_total_sequence_length == 8192 and plan.backend == "megatron"


def test_global_batch_follows_prompt_overrides():
    cfg = resolve(WORKPLACE, ["grpo.num_prompts_per_step=32"])
    assert cfg["policy"]["train_global_batch_size"] == 512


ARCH = {"num_attention_heads": 40, "num_key_value_heads": 8}


@pytest.mark.parametrize("overrides, expected", [
    (["policy.megatron_cfg.tensor_model_parallel_size=3"], "World size (8) must be divisible by PP * CP * TP (3)"),
    (["policy.megatron_cfg.tensor_model_parallel_size=16"], "World size (8) is insufficient"),
    (["policy.megatron_cfg.tensor_model_parallel_size=4", "policy.logprob_batch_size=2"], "TP 4 >= 4 needs"),
    (["policy.train_global_batch_size=1000"], "Total batch size (1024 = prompts x generations) is not a multiple"),
    (["policy.train_global_batch_size=2", "grpo.num_prompts_per_step=2", "grpo.num_generations_per_prompt=1",
      "policy.megatron_cfg.tensor_model_parallel_size=8"], None),
    (["policy.generation.vllm_cfg.tensor_parallel_size=3"], "World size must be a multiple of model parallel size"),
    (["policy.dtensor_cfg.enabled=true"], "both true"),
    (["cluster.gpus_per_node=5", "policy.megatron_cfg.tensor_model_parallel_size=5"],
     "num_query_groups (8) must be a multiple of tensor_model_parallel_size (5)"),
    (["policy.generation.vllm_cfg.async_engine=false"], "NeMo Gym needs policy.generation.vllm_cfg.async_engine"),
])
def test_constraints(overrides, expected):
    found = nemo_plan.violations(resolve(WORKPLACE, overrides), arch=ARCH)
    if expected is None:
        assert found == []
    else:
        assert any(expected in line for line in found), found


def test_tp3_fails_with_the_reason_from_the_trainer(tmp_path):
    build_cache(tmp_path / "hub", model_files(shards=1))
    trainer = NemoRLTrainer()
    cfg = trainer.resolve(Plan(WORKPLACE, ("policy.megatron_cfg.tensor_model_parallel_size=3",)))
    found = trainer.constraint_violations(cfg, env={"HF_HOME": str(tmp_path)})
    assert any("must be divisible by PP * CP * TP (3)" in v for v in found)
    assert any("num_attention_heads (40) must be a multiple of tensor_model_parallel_size (3)" in v for v in found)


def test_key_absent_from_yaml_needs_plus_plus():
    with pytest.raises(ConfigError, match="Could not override 'policy.generation.vllm_cfg.tool_parser_plugin'"):
        resolve(WORKPLACE, ["policy.generation.vllm_cfg.tool_parser_plugin=/x.py"])
    assert resolve(WORKPLACE, ["++policy.generation.vllm_cfg.tool_parser_plugin=/x.py"])


def test_dtensor_knobs_replace_megatron_keys():
    cfg = resolve(NEMO_CONFIGS / "grpo_math_1B.yaml")
    trainer = NemoRLTrainer()
    assert trainer.knobs_for(cfg) == DTENSOR_KNOBS
    assert DTENSOR_KNOBS[0].key == "policy.dtensor_cfg.tensor_parallel_size"
    assert trainer.knobs_for(resolve(WORKPLACE)) == MEGATRON_KNOBS
    assert [k.kind for k in MEGATRON_KNOBS] == ["tp", "micro_batch", "logprob_batch", "gen_mem", "gen_tp",
                                                "act_ckpt", "offload", "prompts"]
    assert [k.changes_experiment for k in MEGATRON_KNOBS] == [False] * 7 + [True]


# ---- pure helpers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("left_s, expected", [(3600 * 5 + 900, "00:05:00:00"), (86400 + 3661 + 900, "01:01:01:01"),
                                              (900, None), (100, None)])
def test_must_save_by(left_s, expected):
    assert must_save_by(1000.0 + left_s, 1000.0, 900.0) == expected


def test_arch_list():
    assert arch_list([(9, 0)] * 8) == "9.0"
    assert arch_list([(10, 0), (9, 0)]) == "9.0 10.0"


# ---- launch -------------------------------------------------------------------------------------------

@pytest.fixture
def hf_home(tmp_path):
    build_cache(tmp_path / "hf" / "hub", model_files(shards=2))
    return tmp_path / "hf"


def _trainer(tmp_path, **kw) -> NemoRLTrainer:
    repo = tmp_path / "RL"
    repo.mkdir(exist_ok=True)
    return NemoRLTrainer(repo=repo, gpu_reader=kw.pop("gpu", FakeGpuReader.healthy(8)), **kw)


def test_launch_is_the_tutorial_command(tmp_path, hf_home):
    trainer = _trainer(tmp_path)
    paths = RunPaths(tmp_path / "results" / "exp1")
    env = {"HF_HOME": str(hf_home), "WANDB_API_KEY": SECRET_KEY, "HF_TOKEN": SECRET_TOKEN, "PATH": "/usr/bin"}
    launch = trainer.launch(Plan(WORKPLACE, ("++grpo.max_num_steps=3",)), paths, env, first=True)
    snap = hf_home / "hub" / f"models--{MODEL.replace('/', '--')}" / "snapshots"
    parser = next(snap.glob("*/nemotron_toolcall_parser_no_streaming.py"))
    assert launch.argv == ("uv", "run", "python", RUNNER, f"--config={WORKPLACE}", "++grpo.max_num_steps=3",
                           f"++logger.log_dir={paths.root}", f"++checkpointing.checkpoint_dir={paths.root}",
                           f"++policy.generation.vllm_cfg.tool_parser_plugin={parser}", "++logger.wandb.name=exp1")
    assert launch.cwd == tmp_path / "RL"
    assert launch.env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert launch.env["HF_HOME"] == str(hf_home)
    assert launch.env["HF_HUB_OFFLINE"] == "1" and launch.env["TRANSFORMERS_OFFLINE"] == "1"
    assert launch.env["NRL_FORCE_REBUILD_VENVS"] == "true"
    assert launch.env["WANDB_API_KEY"] == SECRET_KEY                     # in the environment ...
    assert not any(SECRET_KEY in a or SECRET_TOKEN in a for a in launch.argv)   # ... never on argv


def test_later_launch_and_no_wandb_key(tmp_path, hf_home):
    trainer = _trainer(tmp_path, gpu=FakeGpuReader.of(h100(0), h100(1, compute_capability=(10, 0))))
    env = {"HF_HOME": str(hf_home), "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    launch = trainer.launch(Plan(WORKPLACE, ("logger.log_dir=elsewhere",)), RunPaths(tmp_path / "r"), env, first=False)
    assert launch.env["NRL_FORCE_REBUILD_VENVS"] == "false"
    assert "++logger.wandb_enabled=false" in launch.argv
    assert "logger.log_dir=elsewhere" not in launch.argv                 # log dir forced under results/<exp>
    assert launch.env["TORCH_CUDA_ARCH_LIST"] == "9.0 10.0"
    assert "PYTORCH_CUDA_ALLOC_CONF" not in launch.env


def test_incomplete_cache_keeps_online_and_no_gpu_falls_back(tmp_path, hf_home):
    for shard in (hf_home / "hub").rglob("model-00001-of-00002.safetensors"):
        shard.unlink()
    trainer = _trainer(tmp_path, gpu=FakeGpuReader.no_gpu())
    launch = trainer.launch(Plan(WORKPLACE), RunPaths(tmp_path / "r"), {"HF_HOME": str(hf_home)}, first=True)
    assert "HF_HUB_OFFLINE" not in launch.env
    assert launch.env["TORCH_CUDA_ARCH_LIST"] == "9.0 10.0"             # the tutorial's value


def test_deadline_sets_checkpoint_must_save_by_from_each_launch(tmp_path, hf_home):
    now = [1_000_000.0]
    trainer = _trainer(tmp_path, deadline_ts=1_000_000.0 + 4 * 3600, save_margin_s=600, clock=lambda: now[0])
    env = {"HF_HOME": str(hf_home)}
    first = trainer.launch(Plan(WORKPLACE), RunPaths(tmp_path / "r"), env, first=True)
    now[0] += 3600 + 30
    later = trainer.launch(Plan(WORKPLACE), RunPaths(tmp_path / "r"), env, first=False)
    assert "++checkpointing.checkpoint_must_save_by=00:03:50:00" in first.argv
    assert "++checkpointing.checkpoint_must_save_by=00:02:49:30" in later.argv


def test_dry_run_description(tmp_path, hf_home):
    trainer = _trainer(tmp_path)
    env = {"HF_HOME": str(hf_home), "WANDB_API_KEY": SECRET_KEY, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    text = trainer.describe(Plan(WORKPLACE), RunPaths(tmp_path / "r"), env)
    assert SECRET_KEY not in text and "passed through, redacted: WANDB_API_KEY" in text
    assert f"uv run python {RUNNER} --config={WORKPLACE}" in text
    assert "TORCH_CUDA_ARCH_LIST=9.0" in text and "HF_HUB_OFFLINE=1" in text
    assert "TP 2 x PP 1 x CP 1 -> DP 4" in text
    assert "1. tp: policy.megatron_cfg.tensor_model_parallel_size" in text
    assert "removed PYTORCH_CUDA_ALLOC_CONF" in text


# ---- remedies: the generic planner over NeMo RL's knobs and constraints --------------------------------

def _ctx(trainer, cfg, env):
    return PlanContext(knobs=trainer.knobs_for(cfg), cfg=cfg,
                       violations=lambda c: trainer.constraint_violations(c, None, env))


def test_oom_while_training_raises_tp_and_while_generating_lowers_vllm_share(tmp_path, hf_home):
    trainer, env = NemoRLTrainer(), {"HF_HOME": str(hf_home)}
    plan = Plan(WORKPLACE)
    cfg = trainer.resolve(plan)
    train_oom = Failure("cuda_oom", "CUDA out of memory", phase="training")
    d = next_plan(train_oom, plan, [PastAttempt(plan, "cuda_oom", 2)], _ctx(trainer, cfg, env))
    assert isinstance(d, Relaunch) and d.plan_diff == {"policy.megatron_cfg.tensor_model_parallel_size": (2, 4)}
    gen_oom = Failure("vllm_oom", "CUDA Error: out of memory at csrc/cumem_allocator.cpp", phase="generation")
    d = next_plan(gen_oom, plan, [PastAttempt(plan, "vllm_oom", 2)], _ctx(trainer, cfg, env))
    assert isinstance(d, Relaunch)
    assert d.plan_diff == {"policy.generation.vllm_cfg.gpu_memory_utilization": (0.8, 0.7)}


def test_tp_never_exceeds_what_heads_and_gpus_allow(tmp_path, hf_home):
    trainer, env = NemoRLTrainer(), {"HF_HOME": str(hf_home)}
    plan = Plan(WORKPLACE, ("policy.megatron_cfg.tensor_model_parallel_size=8",))
    cfg = trainer.resolve(plan)
    d = next_plan(Failure("cuda_oom", "oom", phase="training"), plan, [PastAttempt(plan, "cuda_oom")],
                  _ctx(trainer, cfg, env))
    assert isinstance(d, Relaunch)           # TP 16 breaks world size and heads: offload comes next instead
    assert d.plan_diff == {"policy.megatron_cfg.optimizer.optimizer_cpu_offload": (False, True)}


def test_config_error_is_not_retried(tmp_path):
    plan = Plan(WORKPLACE)
    f = Failure("config", "OverridesError: Failed to parse Hydra overrides", deterministic=True)
    assert isinstance(next_plan(f, plan, [PastAttempt(plan, "config")], PlanContext()), GiveUp)


def test_environment_remedies(tmp_path, hf_home):
    trainer = NemoRLTrainer()
    env = {"HF_HOME": str(hf_home)}
    plan = Plan(WORKPLACE)
    assert trainer.environment_remedy(Failure("uv_rate_limit", "429"), plan, env) == {
        "NRL_FORCE_REBUILD_VENVS": "false"}
    assert trainer.environment_remedy(Failure("venv_broken", "x"), plan, env) == {"NRL_FORCE_REBUILD_VENVS": "true"}
    assert trainer.environment_remedy(Failure("hf_rate_limit", "429"), plan, env) == {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert trainer.environment_remedy(Failure("hf_rate_limit", "429"), plan, {"HF_HOME": str(tmp_path / "no")}) == {}
    timeout = Failure("hang", "GenerationUnavailable: generation shard 0 (worker 0) did not return within 900.0s")
    assert trainer.environment_remedy(timeout, plan, env) == {"NRL_VLLM_ASYNC_TIMEOUT_SECONDS": "1800"}
    assert trainer.environment_remedy(Failure("cuda_oom", "x"), plan, env) == {}


def test_valid_tp_values():
    assert nemo_plan.valid_tp(resolve(WORKPLACE), ARCH) == [1, 2, 4, 8]
    assert nemo_plan.valid_tp(resolve(WORKPLACE, ["cluster.gpus_per_node=6"]), ARCH) == [1, 2]
    assert nemo_plan.valid_tp(resolve(WORKPLACE, ["cluster.gpus_per_node=6"])) == [1, 2, 3, 6]
