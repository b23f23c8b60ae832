"""Constraints the embedded workload enforces on a resolved config, and its derived sizes. Pure; no I/O.

Shared by the trainer (refuses to start, one line per problem) and by `training.embedded.EmbeddedTrainer`
(the supervisor checks a new plan before launching it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.grpo.model import ModelShape
from training.grpo.task import MAX_RESPONSE_LEN, PROMPT_LEN, Vocab

FAULT_KEYS = ("hang_at_step", "crash_at_step", "slow_step_s", "slow_start_s", "alloc_mib", "slow_save_s",
              "every_launch")


def model_shape(cfg: Mapping[str, Any]) -> ModelShape:
    m = cfg["policy"]["model"]
    return ModelShape(vocab_size=len(Vocab()), hidden_size=int(m["hidden_size"]), num_layers=int(m["num_layers"]),
                      num_heads=int(m["num_heads"]), ffn_size=int(m.get("ffn_size", 4 * int(m["hidden_size"]))),
                      tp=tp_size(cfg))


def tp_size(cfg: Mapping[str, Any]) -> int:
    return int(cfg["policy"]["dtensor_cfg"].get("tensor_parallel_size", 1) or 1)


def violations(cfg: Mapping[str, Any], gpus: int | None = None) -> list[str]:
    """Each constraint `cfg` breaks, as one line naming the value and the fix; [] when fine."""
    try:
        return _violations(cfg, gpus)
    except (KeyError, TypeError, ValueError) as err:
        return [f"config is missing or has a bad value for {err} (compare with "
                f"training/configs/grpo_workplace_tiny.yaml)"]


def _violations(cfg: Mapping[str, Any], gpus: int | None) -> list[str]:
    grpo, policy = cfg["grpo"], cfg["policy"]
    out: list[str] = []
    prompts, gens = int(grpo["num_prompts_per_step"]), int(grpo["num_generations_per_prompt"])
    gbs, mbs, lbs = (int(policy["train_global_batch_size"]), int(policy["train_micro_batch_size"]),
                     int(policy["logprob_batch_size"]))
    for name, value in (("grpo.num_prompts_per_step", prompts), ("grpo.num_generations_per_prompt", gens),
                        ("policy.train_global_batch_size", gbs), ("policy.train_micro_batch_size", mbs),
                        ("policy.logprob_batch_size", lbs), ("grpo.max_num_steps", int(grpo["max_num_steps"]))):
        if value < 1:
            out.append(f"{name} ({value}) must be >= 1")
    if out:
        return out
    tp = tp_size(cfg)
    dp = 1                                      # the embedded workload shards by TP only
    if gbs % (mbs * dp):
        out.append(f"policy.train_global_batch_size ({gbs}) must be a multiple of "
                   f"policy.train_micro_batch_size * DP ({mbs} * {dp}); pick a micro batch that divides it")
    if (prompts * gens) % gbs:
        out.append(f"generated batch grpo.num_prompts_per_step * grpo.num_generations_per_prompt "
                   f"({prompts} * {gens} = {prompts * gens}) must be a multiple of policy.train_global_batch_size "
                   f"({gbs})")
    need = PROMPT_LEN + MAX_RESPONSE_LEN
    seq = int(policy["max_total_sequence_length"])
    if seq < need:
        out.append(f"policy.max_total_sequence_length ({seq}) must be >= {need} (prompt {PROMPT_LEN} + "
                   f"response {MAX_RESPONSE_LEN} tokens)")
    if int(policy["generation"].get("max_new_tokens", MAX_RESPONSE_LEN)) < MAX_RESPONSE_LEN:
        out.append(f"policy.generation.max_new_tokens must be >= {MAX_RESPONSE_LEN} (a full tool call)")
    if tp < 1:
        out.append(f"policy.dtensor_cfg.tensor_parallel_size ({tp}) must be >= 1")
        return out
    out += model_shape(cfg).check()
    if gpus is not None and gpus > 0 and tp > gpus:
        out.append(f"policy.dtensor_cfg.tensor_parallel_size ({tp}) exceeds the {gpus} GPU(s) available; "
                   f"use at most {gpus}")
    if str(cfg.get("checkpointing", {}).get("metric_name", "val:accuracy")).split(":")[0] not in ("val", "train"):
        out.append("checkpointing.metric_name must start with 'val:' or 'train:'")
    return out


def fault_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The `fault.*` keys that are set (non-null), e.g. {"hang_at_step": 3}."""
    section = cfg.get("fault") or {}
    return {k: v for k, v in section.items() if v is not None}
