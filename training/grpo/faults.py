"""Fault injection for tests (docs/contracts.md, "Fault injection"). Does I/O: sleeps, blocks, a marker file.

Refused unless GRPO_OPS_ENABLE_FAULTS=1. A step fault fires only in the launch that first reaches the step
(recorded in `<checkpoint_dir>/.grpo_ops_faults.json`) unless `fault.every_launch=true`, so a relaunch
after a hang at step 3 gets past step 3. A hang is a real blocked wait: with TP > 1 rank 0 waits in a
gloo/NCCL all-reduce that the other ranks never join; with one rank the main thread waits on an Event.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ops.errors import UserError

ENABLE_VAR = "GRPO_OPS_ENABLE_FAULTS"
MARKER = ".grpo_ops_faults.json"


def refuse_unless_enabled(settings: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Raise UserError naming the first fault setting when fault injection is not enabled."""
    if settings and env.get(ENABLE_VAR) != "1":
        key, value = next(iter(settings.items()))
        raise UserError(f"fault injection requested (fault.{key}={value}) but {ENABLE_VAR}=1 is not set")


class Faults:
    """The fault plan of one launch; `at_step` is called by every rank at the start of each step."""

    def __init__(self, settings: Mapping[str, Any], checkpoint_dir: Path, rank: int, world: int):
        self.s = dict(settings)
        self.marker = Path(checkpoint_dir) / MARKER
        self.rank, self.world = rank, world
        # Read once at start-up, so every rank decides from the same record.
        self.fired: dict[str, list[int]] = json.loads(self.marker.read_text()) if self.marker.exists() else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.s.get(key, default)

    def _first_time(self, name: str, step: int) -> bool:
        """True when `name` has not fired at `step` in an earlier launch (records it; rank 0 writes)."""
        if self.s.get("every_launch"):
            return True
        if step in self.fired.get(name, []):
            return False
        self.fired.setdefault(name, []).append(step)
        if self.rank == 0:
            fired = self.fired
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.marker.with_suffix(".tmp")
            with open(tmp, "w") as fh:
                json.dump(fired, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.marker)
        return True

    def slow_start(self) -> None:
        if self.s.get("slow_start_s"):
            time.sleep(float(self.s["slow_start_s"]))

    def at_step(self, step: int) -> None:
        if self.s.get("slow_step_s"):
            time.sleep(float(self.s["slow_step_s"]))
        if self.s.get("crash_at_step") == step and self._first_time("crash_at_step", step):
            raise RuntimeError(f"grpo-ops fault injection: crash at step {step}")
        if self.s.get("hang_at_step") == step and self._first_time("hang_at_step", step):
            self._hang()

    def _hang(self) -> None:
        if self.world > 1 and self.rank == 0:
            import torch
            import torch.distributed as dist
            device = f"cuda:{self.rank}" if dist.get_backend() == "nccl" else "cpu"
            t = torch.ones(1, device=device)
            dist.all_reduce(t)                  # the other ranks never join: a real collective hang
            if device != "cpu":
                torch.cuda.synchronize()        # NCCL is asynchronous: block on the collective itself
        threading.Event().wait()

    def slow_save(self) -> None:
        if self.s.get("slow_save_s"):
            time.sleep(float(self.s["slow_save_s"]))

    def extra_alloc_mib(self, samples: int) -> int:
        return int(float(self.s.get("alloc_mib") or 0) * samples)
