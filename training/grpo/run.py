"""One launch of the embedded workload: config checks, device and rank layout, and each rank's body.
Does I/O (stdout, files under logger.log_dir and checkpointing.checkpoint_dir, child processes).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ops.errors import UserError
from training.grpo import checks, parallel
from training.grpo.faults import Faults, refuse_unless_enabled

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "grpo_workplace_tiny.yaml"


def pick_device(requested: str | None) -> str:
    import torch
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but torch sees no CUDA device; use --device cpu")
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def launch(cfg: dict[str, Any], device_type: str, env: dict[str, str]) -> int:
    """Check `cfg`, then run its ranks (in this process when there is one and no memory limit)."""
    refuse_unless_enabled(checks.fault_settings(cfg), env)
    gpus = None
    if device_type == "cuda":
        import torch
        gpus = torch.cuda.device_count()
    problems = checks.violations(cfg, gpus)
    if problems:
        raise UserError("; ".join(problems))
    world = checks.tp_size(cfg)
    limit = cfg.get("cluster", {}).get("cpu_device_memory_mib")
    limit = int(limit) if limit and device_type == "cpu" else None
    backend = "nccl" if device_type == "cuda" else "gloo"
    if world == 1 and limit is None:
        rank_main(0, 1, backend, cfg, device_type)
        return 0
    try:
        return parallel.run_ranks(rank_main, world, backend, (cfg, device_type), limit)
    except OSError as err:
        raise UserError(f"cannot set up rank memory cgroups for cluster.cpu_device_memory_mib={limit}: {err} "
                        f"(needs root and a writable memory cgroup; drop the override)") from err


def _cpu_threads(world: int) -> int:
    """Intra-op threads per rank: 1 unless OMP_NUM_THREADS (the budget for all ranks together) says more.
    The models are small; on a contended 2-core machine two spinning OpenMP threads per rank made steps
    10-30x slower than one (measured: 0.13-0.29 s vs 3.3-4.4 s a step at load ~8)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]) // world)
    return 1


def rank_main(rank: int, world: int, backend: str, cfg: dict[str, Any], device_type: str) -> None:
    """The body of one rank: set up, train, close. Exceptions propagate (real tracebacks, exit != 0)."""
    import torch

    from training.grpo.logger import RunLogger, next_experiment_dir
    from training.grpo.memory import model_line
    from training.grpo.trainer import Trainer

    t0 = time.monotonic()
    parallel.init_group(rank, world, backend)
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(_cpu_threads(world))
        device = torch.device("cpu")
    main = rank == 0
    log_cfg = cfg["logger"]
    exp_dir = next_experiment_dir(Path(log_cfg["log_dir"])) if main else None
    log = RunLogger(main, exp_dir, log_cfg.get("wandb") if log_cfg.get("wandb_enabled") else None)
    if main:
        log.print(f"📊 Using log directory: {exp_dir}")
        log.print(f"📊 Using checkpoint directory: {cfg['checkpointing']['checkpoint_dir']}")
        log.print("Final config:")
        log.print(yaml.safe_dump(cfg, sort_keys=False).rstrip())
    trainer = Trainer(cfg, rank, world, device, log,
                      Faults(checks.fault_settings(cfg), Path(cfg["checkpointing"]["checkpoint_dir"]), rank, world))
    shape = checks.model_shape(cfg)
    log.print(model_line(shape, trainer.seq_len, bool(cfg["policy"]["dtensor_cfg"].get("activation_checkpointing")),
                         trainer.kl_coef > 0, device, trainer.bf16))
    trainer.setup()
    trainer.faults.slow_start()
    log.print("\n" + "=" * 60)
    log.print(" " * 23 + "SETUP COMPLETE")
    log.print(f"  Total setup time: {time.monotonic() - t0:.1f}s")
    log.print("=" * 60 + "\n")
    try:
        trainer.run()
    finally:
        log.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
