"""training.config: NeMo RL's defaults inheritance, Hydra overrides in struct mode, resolvers, error text."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.errors import UserError
from training.config import ConfigError, load_config, resolve

FIXTURES = Path("/work/shared/fixtures/nemo_rl")
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training" / "configs" / "grpo_workplace_tiny.yaml"
NEMO_YAMLS = sorted(FIXTURES.glob("*.yaml")) if FIXTURES.is_dir() else []


@pytest.mark.skipif(not NEMO_YAMLS, reason="NeMo RL fixtures not present")
@pytest.mark.parametrize("path", NEMO_YAMLS, ids=lambda p: p.name)
def test_real_nemo_rl_configs_load_and_resolve(path):
    cfg = resolve(path)
    assert "defaults" not in cfg
    assert isinstance(cfg["policy"]["train_global_batch_size"], int)
    assert "${" not in repr(cfg)                                  # every interpolation resolved
    mb = cfg["policy"]["dynamic_batching"]
    assert mb["train_mb_tokens"] == cfg["policy"]["max_total_sequence_length"] * cfg["policy"]["train_micro_batch_size"]


@pytest.mark.skipif(not NEMO_YAMLS, reason="NeMo RL fixtures not present")
def test_workplace_global_batch_follows_prompt_override():
    cfg = resolve(FIXTURES / "grpo_workplace_assistant_nemotron_nano_v2_9b.yaml", ["grpo.num_prompts_per_step=8"])
    assert cfg["policy"]["train_global_batch_size"] == 8 * cfg["grpo"]["num_generations_per_prompt"]


@pytest.mark.skipif(not NEMO_YAMLS, reason="NeMo RL fixtures not present")
def test_three_level_defaults_chain_children_override_parents():
    base = resolve(FIXTURES / "grpo_math_1B.yaml")
    mid = resolve(FIXTURES / "grpo_math_1B_megatron.yaml")
    leaf = resolve(FIXTURES / "grpo_math_8B_megatron.yaml")
    assert leaf["grpo"]["num_prompts_per_step"] == 64          # the leaf's own value
    assert mid["policy"]["megatron_cfg"]["enabled"] is True      # the middle overrides the base ...
    assert base["policy"]["megatron_cfg"]["enabled"] is False
    assert leaf["policy"]["megatron_cfg"]["enabled"] is True     # ... and the leaf inherits it
    assert leaf["checkpointing"] == {**base["checkpointing"], **leaf["checkpointing"]}


def test_interpolations_resolve_after_overrides():
    cfg = resolve(TINY, ["grpo.num_prompts_per_step=3", "grpo.num_generations_per_prompt=5"])
    assert cfg["policy"]["train_global_batch_size"] == 15
    cfg = resolve(TINY, ["grpo.num_prompts_per_step=3", "policy.train_global_batch_size=7"])
    assert cfg["policy"]["train_global_batch_size"] == 7


def test_bad_key_gives_nemo_rl_text_and_is_a_user_error():
    with pytest.raises(ConfigError) as info:
        resolve(TINY, ["grpo.no_such_key=10"])
    text = str(info.value)
    assert text.startswith("OverridesError: Failed to parse Hydra overrides: Could not override 'grpo.no_such_key'.")
    assert text.endswith("To append to your config use +grpo.no_such_key=10")
    assert isinstance(info.value, UserError)


def test_plus_plus_adds_or_overrides_and_plus_adds():
    cfg = resolve(TINY, ["++fault.hang_at_step=3", "++grpo.seed=7", "+cluster.extra=1"])
    assert cfg["fault"] == {"hang_at_step": 3}
    assert cfg["grpo"]["seed"] == 7
    assert cfg["cluster"]["extra"] == 1
    with pytest.raises(ConfigError, match="Could not append to config. An item is already at 'grpo.seed'"):
        resolve(TINY, ["+grpo.seed=7"])


def test_struct_mode_stays_on_after_loading():
    cfg = load_config(TINY, [])
    with pytest.raises(Exception):
        cfg.grpo.not_there = 1


def test_resolvers_mul_max_div(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("a: 6\nb: 4\nm: ${mul:${a},${b}}\nx: ${max:${a},${b}}\nd: ${div:${a},${b}}\n")
    assert resolve(p) == {"a": 6, "b": 4, "m": 24, "x": 6, "d": 1}


def test_defaults_list_relative_paths_and_override_marker(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text("a: {x: 1, y: 2}\nb: 1\n")
    (tmp_path / "other.yaml").write_text("c: 3\nb: 2\n")
    (tmp_path / "leaf.yaml").write_text("defaults: [sub/base.yaml, other.yaml]\na: {x: 5}\n")
    assert resolve(tmp_path / "leaf.yaml") == {"a": {"x": 5, "y": 2}, "b": 2, "c": 3}
    (tmp_path / "repl.yaml").write_text("defaults: sub/base.yaml\na: {_override_: true, z: 9}\n")
    assert resolve(tmp_path / "repl.yaml") == {"a": {"z": 9}, "b": 1}


def test_missing_file_and_malformed_override_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="^OverridesError: Failed to parse Hydra overrides"):
        resolve(TINY, ["grpo.seed=["])
