"""The TrainerSpec of the embedded GRPO workload (`python -m training.grpo`). Reads the config file; starts nothing.

Knobs, in the order a supervisor should turn them on an OOM: tensor parallelism (per-device memory ~1/tp,
experiment unchanged), micro batch and logprob batch (activations; gradient accumulation keeps the
global batch), activation checkpointing (time for memory), sequence length (activations, ~L and L^2;
changes what fits in a sample), prompts per step last (changes the experiment).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training import config as config_mod
from training.grpo import checks
from training.grpo.run import DEFAULT_CONFIG
from training.spec import Knob, Launch, Plan, RunPaths, Signature, override_key

KNOBS: tuple[Knob, ...] = (
    Knob("policy.dtensor_cfg.tensor_parallel_size", "tp", phases=("training", "logprob")),
    Knob("policy.train_micro_batch_size", "micro_batch", phases=("training",)),
    Knob("policy.logprob_batch_size", "logprob_batch", phases=("logprob",)),
    Knob("policy.dtensor_cfg.activation_checkpointing", "act_ckpt", phases=("training",)),
    Knob("policy.max_total_sequence_length", "seq_len", changes_experiment=True),
    Knob("grpo.num_prompts_per_step", "prompts", changes_experiment=True),
)
FORCED = ("checkpointing.checkpoint_dir", "logger.log_dir")


class EmbeddedTrainer:
    """`ops run` with no NeMo RL checkout: the built-in GRPO workload, launched with this interpreter."""

    name = "embedded"
    knobs: Sequence[Knob] = KNOBS
    # One rank's "device" (cluster.cpu_device_memory_mib, a memory cgroup per rank) ran out: a device OOM, which
    # more tensor-parallel ranks split, not a host OOM. Otherwise the generic PyTorch/OOM signatures apply.
    signatures: Sequence[Signature] = (
        Signature("device_oom", r"grpo-ops: rank \d+ \(pid \d+\) was killed by SIGKILL: Memory cgroup out of memory"),
    )

    def __init__(self, python: str | None = None, device: str | None = None):
        self.python = python or sys.executable
        self.device = device

    def default_config(self) -> Path:
        return DEFAULT_CONFIG

    def resolve(self, plan: Plan) -> dict:
        return config_mod.resolve(plan.config_path, list(plan.overrides))

    def constraint_violations(self, cfg: Mapping[str, Any], gpus: int | None = None) -> list[str]:
        return checks.violations(cfg, gpus)

    def launch(self, plan: Plan, paths: RunPaths, base_env: Mapping[str, str], first: bool) -> Launch:
        keep = [o for o in plan.overrides if override_key(o) not in FORCED]
        forced = [f"++checkpointing.checkpoint_dir={Path(paths.checkpoint_dir).resolve()}",
                  f"++logger.log_dir={Path(paths.log_dir).resolve()}"]
        argv = [self.python, "-m", "training.grpo", f"--config={Path(plan.config_path).resolve()}"]
        if self.device:
            argv.append(f"--device={self.device}")
        env = dict(base_env)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return Launch(tuple(argv + keep + forced), env, Path(paths.root).resolve())
