"""Preflight checks for NeMo RL runs over a real HF cache layout and the real Workplace Assistant config."""

from __future__ import annotations

import pytest

import healthchecks.nemo_rl_checks as checks
from healthchecks.base import FIXES, CheckContext, Status, run_check
from healthchecks.fake_gpu import FakeGpuReader
from nemo_support import MODEL, NEMO_CONFIGS, WORKPLACE, build_cache, model_files


@pytest.fixture
def hf_home(tmp_path):
    build_cache(tmp_path / "hub", model_files(shards=3))
    return tmp_path


def ctx_for(hf_home, overrides=(), gpus=8, trainer="nemo-rl", config=WORKPLACE, **env) -> CheckContext:
    return CheckContext(trainer=trainer, config_path=config, overrides=tuple(overrides),
                        env={"HF_HOME": str(hf_home), **env}, gpu=FakeGpuReader.healthy(gpus))


def one(name, ctx):
    results = run_check(name, ctx)
    assert results and all(r.name == name for r in results), results
    return results


def test_training_config_prints_the_effective_plan(hf_home):
    [res] = one("training_config", ctx_for(hf_home))
    assert res.status == Status.PASS
    assert "TP 2 x PP 1 x CP 1 -> DP 4" in res.detail and "gpu_memory_utilization 0.8" in res.detail
    assert res.data["plan"]["dp"] == 4 and res.data["model_arch"]["num_attention_heads"] == 40


def test_tp3_fails_with_the_reason(hf_home):
    results = one("training_config", ctx_for(hf_home, ["policy.megatron_cfg.tensor_model_parallel_size=3"]))
    assert all(r.status == Status.FAIL for r in results)
    details = [r.detail for r in results]
    assert any("World size (8) must be divisible by PP * CP * TP (3)" in d for d in details)
    assert any("num_attention_heads (40) must be a multiple of tensor_model_parallel_size (3)" in d for d in details)
    assert all(r.fix.endswith("one of 1, 2, 4, 8") for r in results)


def test_key_absent_from_yaml_without_plus_plus_fails_with_the_fix(hf_home):
    [res] = one("training_config", ctx_for(hf_home, ["policy.generation.vllm_cfg.tool_parser_plugin=/p.py"]))
    assert res.status == Status.FAIL
    assert "Could not override 'policy.generation.vllm_cfg.tool_parser_plugin'" in res.detail
    assert res.fix == ("'policy.generation.vllm_cfg.tool_parser_plugin' is not in the YAML: write it as "
                       "++policy.generation.vllm_cfg.tool_parser_plugin=/p.py")


def test_fewer_gpus_than_the_config_asks(hf_home):
    results = one("training_config", ctx_for(hf_home, gpus=1))
    assert any("cluster.gpus_per_node=8 but only 1 GPU(s) are visible" in r.detail for r in results)
    assert any(r.fix == "set cluster.gpus_per_node=1" for r in results)


def test_unknown_heads_say_unknown(tmp_path):
    results = one("training_config", ctx_for(tmp_path))
    assert [r.status for r in results] == [Status.PASS, Status.UNKNOWN]
    assert "attention heads / KV groups" in results[1].detail


def test_hf_cache_pass_and_fail(hf_home):
    [ok] = one("hf_cache", ctx_for(hf_home))
    assert ok.status == Status.PASS and "HF_HUB_OFFLINE=1 is safe" in ok.detail
    next((hf_home / "hub").rglob("model-00002-of-00003.safetensors")).unlink()
    [bad] = one("hf_cache", ctx_for(hf_home, HF_HUB_OFFLINE="1"))
    assert bad.status == Status.FAIL and "1 of 3 weight shards missing" in bad.detail
    assert "HF_HUB_OFFLINE is set" in bad.detail and bad.fix == f"ops prepare model --model {MODEL}  (resumes the download)"


def test_chat_template_fail_then_fix_then_pass(hf_home):
    ctx = ctx_for(hf_home)
    [before] = one("chat_template", ctx)
    assert before.status == Status.FAIL and before.fix_id == "chat_template"
    assert before.fix == f"ops prepare chat-template --model {MODEL}"
    assert FIXES["chat_template"](ctx, True) == ["tokenizer_config.json: would patch"]
    assert FIXES["chat_template"](ctx, False) == ["tokenizer_config.json: patched (backup tokenizer_config.json.orig)"]
    [after] = one("chat_template", ctx)
    assert after.status == Status.PASS and "verified by rendering" in after.detail


def test_tool_parser_found_missing_and_given(hf_home, tmp_path):
    [found] = one("tool_parser_plugin", ctx_for(hf_home))
    assert found.status == Status.PASS and found.data["path"].endswith("nemotron_toolcall_parser_no_streaming.py")
    [given] = one("tool_parser_plugin", ctx_for(hf_home, ["++policy.generation.vllm_cfg.tool_parser_plugin=/no.py"]))
    assert given.status == Status.FAIL and "does not exist" in given.detail
    next((hf_home / "hub").rglob("nemotron_toolcall_parser_no_streaming.py")).unlink()
    [missing] = one("tool_parser_plugin", ctx_for(hf_home))
    assert missing.status == Status.FAIL and missing.fix.startswith("ops prepare model")


def test_checks_stay_out_of_embedded_runs(hf_home):
    tiny = checks.__file__.replace("healthchecks/nemo_rl_checks.py", "training/configs/grpo_workplace_tiny.yaml")
    for name in ("hf_cache", "chat_template", "tool_parser_plugin", "training_config"):
        assert run_check(name, ctx_for(hf_home, trainer="embedded", config=tiny)) == []


def test_a_nemo_rl_config_is_recognised_without_trainer_flag(hf_home):
    ctx = ctx_for(hf_home, trainer="embedded", config=NEMO_CONFIGS / "grpo_math_8B_megatron.yaml")
    assert checks.is_nemo_rl(ctx)
    results = run_check("training_config", ctx)
    assert results[0].status == Status.PASS and "TP 1 x PP 2 x CP 1 -> DP 4" in results[0].detail
