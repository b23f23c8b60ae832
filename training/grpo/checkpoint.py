"""NeMo RL's checkpoint layout, atomic saves, top-k retention and resume lookup. Does file I/O.

    checkpoint_dir/
      tmp_step_N/ -> renamed to step_N/ once complete (a stale tmp_step_* is removed on the next save)
        training_info.json  config.yaml  policy/weights/model.pt  policy/optimizer/optimizer.pt
      latest_checkpoint_status.json   {"last_successful_ckpt_save_completion": iso time, "last_checkpoint_step": N}

Weights and optimizer state are stored unsharded (TP ranks gather to rank 0), so a run may resume
with a different `tensor_parallel_size`. Every file is written to a temporary name, fsync'd, renamed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

_STEP_RE = re.compile(r"^step_(\d+)$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write `path` via `write(fh)` to a temp file in the same directory, fsync, rename, fsync the dir."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb" if binary else "w") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def complete_steps(checkpoint_dir: Path) -> list[int]:
    """Steps N with a complete `step_N/` (has training_info.json), ascending; tmp_step_* are ignored."""
    if not Path(checkpoint_dir).is_dir():
        return []
    steps = []
    for child in Path(checkpoint_dir).iterdir():
        m = _STEP_RE.match(child.name)
        if m and (child / "training_info.json").is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    steps = complete_steps(checkpoint_dir)
    return Path(checkpoint_dir) / f"step_{steps[-1]}" if steps else None


def load_training_info(step_dir: Path) -> dict:
    return json.loads((step_dir / "training_info.json").read_text())


def load_state(step_dir: Path) -> tuple[dict, dict | None]:
    """(model state dict, optimizer state or None) of a complete checkpoint, unsharded, on CPU."""
    import torch
    weights = torch.load(step_dir / "policy" / "weights" / "model.pt", map_location="cpu", weights_only=True)
    opt_path = step_dir / "policy" / "optimizer" / "optimizer.pt"
    opt = torch.load(opt_path, map_location="cpu", weights_only=True) if opt_path.is_file() else None
    return weights, opt


def save(checkpoint_dir: Path, step: int, info: Mapping[str, Any], config: Mapping[str, Any],
         weights: Mapping[str, Any], optimizer: Mapping[str, Any] | None,
         before_rename: Callable[[], None] = lambda: None) -> Path:
    """Write `tmp_step_N`, then rename it to `step_N`; update latest_checkpoint_status.json."""
    import torch
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"tmp_step_{step}"
    (tmp / "policy" / "weights").mkdir(parents=True)
    write_atomic(tmp / "training_info.json", lambda fh: json.dump(dict(info), fh, indent=2))
    write_atomic(tmp / "config.yaml", lambda fh: yaml.safe_dump(dict(config), fh, sort_keys=False))
    write_atomic(tmp / "policy" / "weights" / "model.pt", lambda fh: torch.save(dict(weights), fh), binary=True)
    if optimizer is not None:
        (tmp / "policy" / "optimizer").mkdir(parents=True)
        write_atomic(tmp / "policy" / "optimizer" / "optimizer.pt", lambda fh: torch.save(dict(optimizer), fh),
                     binary=True)
    before_rename()
    final = root / f"step_{step}"
    if final.exists():                              # same step saved again: replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    status = {"last_successful_ckpt_save_completion": dt.datetime.now(dt.timezone.utc).isoformat(),
              "last_checkpoint_step": step}
    write_atomic(root / "latest_checkpoint_status.json", lambda fh: json.dump(status, fh))
    return final


def to_remove(entries: Mapping[int, float | None], keep_top_k: int | None, higher_is_better: bool) -> list[int]:
    """Pure retention rule: keep the latest step and the top-k steps by metric (a step without the
    metric ranks last; ties go to the newer step). Returns the steps to delete, ascending."""
    if keep_top_k is None or not entries:
        return []
    latest = max(entries)
    sign = 1.0 if higher_is_better else -1.0

    def rank_key(step: int) -> tuple:
        metric = entries[step]
        return (metric is not None, sign * metric if metric is not None else 0.0, step)

    ranked = sorted(entries, key=rank_key, reverse=True)
    keep = set(ranked[:max(int(keep_top_k), 0)]) | {latest}
    return sorted(s for s in entries if s not in keep)


def prune(checkpoint_dir: Path, metric_name: str, keep_top_k: int | None, higher_is_better: bool) -> list[Path]:
    """Delete checkpoints outside the retention rule; returns the removed paths."""
    entries = {s: load_training_info(Path(checkpoint_dir) / f"step_{s}").get(metric_name)
               for s in complete_steps(checkpoint_dir)}
    removed = []
    for step in to_remove(entries, keep_top_k, higher_is_better):
        path = Path(checkpoint_dir) / f"step_{step}"
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
