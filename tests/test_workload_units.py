"""Pure parts of the embedded workload: task reward, advantages, loss, retention, memory model, the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.embedded import EmbeddedTrainer
from training.grpo import algo
from training.grpo.checkpoint import to_remove
from training.grpo.checks import violations
from training.grpo.logger import next_experiment_dir
from training.grpo.memory import per_sample_mib, static_mib
from training.grpo.model import ModelShape, Policy
from training.grpo.task import (PROMPT_LEN, TOOLS, Vocab, all_examples, grammar, parse_call, reward, split)
from training.spec import Plan, RunPaths

EX = next(e for e in all_examples() if e.tool == "send_email")


@pytest.mark.parametrize("response,mode,expected", [
    (["send_email", "alice", "budget", "<eos>"], "binary", 1.0),
    (["send_email", "bob", "budget", "<eos>"], "binary", 0.0),
    (["send_email", "bob", "budget", "<eos>"], "partial", 2 / 3),      # table row + subject match, `to` wrong
    (["create_task", "alice", "budget", "<eos>"], "partial", 0.0),     # another table: nothing matches
    (["send_email", "alice", "<eos>", "<pad>"], "partial", 0.0),       # malformed call
    (["log_call", "alice", "<eos>", "<pad>"], "binary", 0.0),
])
def test_reward_replays_calls_and_compares_states(response, mode, expected):
    assert EX.text == "email alice about the budget"
    assert reward(EX, response, mode) == pytest.approx(expected)


def test_split_is_stable_disjoint_and_covers_every_tool():
    train, val = split(all_examples())
    assert {e.text for e in train}.isdisjoint({e.text for e in val})
    assert split(all_examples()) == (train, val)
    assert {e.tool for e in train} == {t.name for t in TOOLS}
    assert 0.1 < len(val) / (len(train) + len(val)) < 0.3


def test_prompts_have_fixed_length_and_calls_parse_back():
    vocab = Vocab()
    for ex in all_examples():
        assert len(vocab.encode_prompt(ex.text)) == PROMPT_LEN
        assert parse_call(vocab.decode(vocab.encode_call(ex))) == (ex.tool, dict(ex.args))


def test_leave_one_out_baseline():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    adv = algo.leave_one_out_advantages(r, group=3, normalize=False)
    assert adv.tolist() == pytest.approx([1.0, -0.5, -0.5, 0.0, 0.0, 0.0])
    norm = algo.leave_one_out_advantages(r, group=3, normalize=True)
    assert norm[3:].tolist() == [0.0, 0.0, 0.0] and norm[0] > 0 > norm[1]


def test_clipped_loss_clips_the_ratio():
    lp, old = torch.tensor([[0.5]]), torch.tensor([[0.0]])          # ratio e^0.5 ~ 1.65, above 1.2
    loss, stats = algo.clipped_pg_loss(lp, old, None, torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.2, 0.0, 1.0)
    assert loss.item() == pytest.approx(-1.2) and stats["clip_frac"] == 1.0
    loss, _ = algo.clipped_pg_loss(lp, old, None, torch.tensor([-1.0]), torch.ones(1, 1), 0.2, 0.2, 0.0, 1.0)
    assert loss.item() == pytest.approx(torch.e ** 0.5, rel=1e-4)   # pessimistic side is not clipped


def test_generation_logprobs_equal_training_logprobs_under_the_grammar():
    torch.manual_seed(0)
    vocab = Vocab()
    policy = Policy(ModelShape(len(vocab), 32, 1, 2, 64)).eval()
    table = algo.grammar_tables(grammar(vocab), len(vocab), "cpu")
    tool_ids = torch.tensor([vocab.index[t.name] for t in TOOLS])
    prompts = torch.tensor([vocab.encode_prompt(e.text) for e in all_examples()[:8]])
    ro = algo.generate(policy, prompts, table, tool_ids, 1.0, torch.Generator().manual_seed(1), 0)
    tokens = algo.packed_tokens(ro, 16, 0)
    lp = algo.token_logprobs(policy, tokens, ro.responses, ro.allowed, PROMPT_LEN, 1.0)
    assert torch.allclose(lp * ro.response_mask, ro.gen_logprobs, atol=1e-5)
    for row in ro.responses.tolist():                       # every sample is a well-formed call
        assert parse_call(vocab.decode(row)) is not None


@pytest.mark.parametrize("entries,k,higher,removed", [
    ({2: 0.1, 4: 0.5, 6: 0.3, 8: None}, 2, True, [2]),      # top-2 by metric (4, 6) plus the latest (8)
    ({2: 0.1, 4: 0.5, 6: 0.3, 8: None}, 3, True, []),
    ({2: 0.1, 4: 0.5, 6: 0.3, 8: 0.2}, 1, False, [4, 6]),   # lower is better: keep 2 and the latest
    ({2: None, 4: None, 6: None}, 1, True, [2, 4]),
    ({2: 0.1, 4: 0.5}, None, True, []),
])
def test_checkpoint_retention(entries, k, higher, removed):
    assert to_remove(entries, k, higher) == removed


def test_memory_model_scales_with_the_knobs():
    base = ModelShape(77, 256, 4, 8, 1024)
    assert per_sample_mib(base, 256, False) > 2.5 * per_sample_mib(base, 128, False)        # L and L^2 terms
    assert per_sample_mib(ModelShape(77, 256, 8, 8, 1024), 128, False) > 1.9 * per_sample_mib(base, 128, False)
    assert per_sample_mib(ModelShape(77, 256, 4, 8, 1024, tp=2), 128, False) < per_sample_mib(base, 128, False)
    assert per_sample_mib(base, 128, True) < per_sample_mib(base, 128, False)
    assert static_mib(ModelShape(77, 256, 4, 8, 1024, tp=2), False) < 0.6 * static_mib(base, False)
    assert static_mib(base, True) > static_mib(base, False)


def test_experiment_dirs_count_up(tmp_path):
    assert next_experiment_dir(tmp_path).name == "exp_001"
    (tmp_path / "exp_007").mkdir()
    assert next_experiment_dir(tmp_path).name == "exp_008"


def test_embedded_spec_resolves_checks_and_forces_run_dirs(tmp_path):
    spec = EmbeddedTrainer(python="/usr/bin/python3")
    assert [k.kind for k in spec.knobs] == ["tp", "micro_batch", "logprob_batch", "act_ckpt", "seq_len", "prompts"]
    assert spec.knobs[-1].changes_experiment and not spec.knobs[0].changes_experiment
    plan = Plan(spec.default_config(), ("policy.train_micro_batch_size=8", "++checkpointing.checkpoint_dir=/elsewhere"))
    cfg = spec.resolve(plan)
    assert cfg["policy"]["train_micro_batch_size"] == 8 and spec.constraint_violations(cfg) == []
    launch = spec.launch(plan, RunPaths(tmp_path / "exp"), {"HOME": "/root"}, first=True)
    assert launch.argv[:3] == ("/usr/bin/python3", "-m", "training.grpo")
    assert f"++checkpointing.checkpoint_dir={tmp_path / 'exp'}" in launch.argv
    assert f"++logger.log_dir={tmp_path / 'exp'}" in launch.argv
    assert "++checkpointing.checkpoint_dir=/elsewhere" not in launch.argv
    assert Path(launch.env["PYTHONPATH"].split(":")[0], "training", "embedded.py").is_file()


@pytest.mark.parametrize("change,needle", [
    ({"policy.dtensor_cfg.tensor_parallel_size": 3}, "num_heads (4) must be divisible"),
    ({"policy.train_micro_batch_size": 48}, "must be a multiple of policy.train_micro_batch_size"),
    ({"policy.train_global_batch_size": 96}, "must be a multiple of policy.train_global_batch_size (96)"),
    ({"policy.max_total_sequence_length": 8}, "max_total_sequence_length (8) must be >= 11"),
])
def test_constraint_violations_name_the_value(change, needle):
    spec = EmbeddedTrainer()
    cfg = spec.resolve(Plan(spec.default_config()))
    for key, value in change.items():
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    assert any(needle in v for v in violations(cfg)), violations(cfg)


def test_tp_above_gpu_count_is_a_violation():
    spec = EmbeddedTrainer()
    cfg = spec.resolve(Plan(spec.default_config(), ("policy.dtensor_cfg.tensor_parallel_size=2",)))
    assert spec.constraint_violations(cfg, gpus=2) == []
    assert "exceeds the 1 GPU(s) available" in spec.constraint_violations(cfg, gpus=1)[0]
