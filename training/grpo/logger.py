"""What the workload prints and records, in NeMo RL's words (reference/nemo_rl.md section 2). Does I/O:
stdout (flushed per line), `<log_dir>/exp_NNN/metrics.jsonl`, and W&B when `logger.wandb_enabled`.

Only rank 0 prints and writes; other ranks get a silent logger.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_EXP_RE = re.compile(r"^exp_(\d+)$")
BANNER = "=" * 25


def next_experiment_dir(log_dir: Path) -> Path:
    """A new `<log_dir>/exp_NNN` (one more than the highest existing), created race-free."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    while True:
        nums = [int(m.group(1)) for c in log_dir.iterdir() if (m := _EXP_RE.match(c.name))]
        path = log_dir / f"exp_{(max(nums) + 1) if nums else 1:03d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


class RunLogger:
    """stdout lines + metrics.jsonl (+ W&B) for rank 0."""

    def __init__(self, enabled: bool, exp_dir: Path | None = None, wandb_cfg: Mapping[str, Any] | None = None):
        self.enabled = enabled
        self.exp_dir = exp_dir
        self._fd = None
        self._wandb = None
        if enabled and exp_dir is not None:
            self._fd = os.open(exp_dir / "metrics.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if wandb_cfg is not None:
                import wandb
                self._wandb = wandb.init(project=wandb_cfg.get("project"), name=wandb_cfg.get("name"),
                                         dir=str(exp_dir))

    def print(self, text: str = "") -> None:
        if self.enabled:
            print(text, flush=True)

    def metrics(self, step: int, values: Mapping[str, Any]) -> None:
        """One JSON line: {"step": N, "time": epoch s, <NeMo RL W&B keys>...}; one os.write per line."""
        if not self.enabled or self._fd is None:
            return
        record = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in values.items()}}
        os.write(self._fd, (json.dumps(record) + "\n").encode())
        os.fsync(self._fd)
        if self._wandb is not None:
            self._wandb.log(dict(values), step=step)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    # ---- NeMo RL's blocks ---------------------------------------------------------------------
    def step_banner(self, step: int, total: int) -> None:
        self.print(f"\n{BANNER} Step {step}/{total} {BANNER}")

    def training_results(self, m: Mapping[str, float], timing: Mapping[str, float]) -> None:
        self.print("\n📊 Training Results:")
        self.print(f"  • Loss: {m['train/loss']:.4f}")
        self.print(f"  • Generation KL Error: {m['train/gen_kl_error']:.4f}")
        self.print(f"  • Avg Reward: {m['train/reward']:.4f}")
        self.print(f"  • Mean Generation Length: {m['train/mean_gen_tokens_per_sample']:.4f}")
        total = timing["total_step_time"]
        self.print("\n⏱️  Timing:")
        self.print(f"  • Total step time: {total:.2f}s")
        for name, secs in sorted(timing.items(), key=lambda kv: -kv[1]):
            if name != "total_step_time":
                self.print(f"  • {name}: {secs:.2f}s ({100.0 * secs / max(total, 1e-9):.1f}%)")
        self.print("\n🔍 Performance Metrics:")
        self.print(f"  • Peak memory: {m['memory/peak_mib']:.1f} MiB")

    def validation_results(self, accuracy: float, avg_len: float, samples: int, secs: float) -> None:
        self.print("\n📊 Validation Results:")
        self.print(f"    • Accuracy: {accuracy:.4f}")
        self.print(f"    • Average response length: {avg_len:.1f} tokens")
        self.print(f"    • Samples processed: {samples}")
        self.print("\n  ⏱️  Validation Timing:")
        self.print(f"    • Total validation time: {secs:.2f}s")


def _plain(v: Any) -> Any:
    try:
        return float(v) if not isinstance(v, (int, str, bool)) and v is not None else v
    except (TypeError, ValueError):
        return str(v)
