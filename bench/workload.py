"""Benchmark the embedded GRPO workload: steps/s, peak memory and the learning curve (start vs end).

    PYTHONPATH=. python bench/workload.py                      # default config on CPU (+ CUDA when present)
    PYTHONPATH=. python bench/workload.py --device cuda --steps 100 -- policy.train_micro_batch_size=32

Runs `python -m training.grpo` as a real process per device, in a temp dir, and prints one block per device.
Machine state (cores, load average before/after) is printed too: steps/s depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(device: str, steps: int | None, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as tmp:
        argv = [sys.executable, "-m", "training.grpo", f"--device={device}", *overrides,
                f"++checkpointing.checkpoint_dir={tmp}/ckpt", f"++logger.log_dir={tmp}/logs"]
        if steps:
            argv.insert(4, f"grpo.max_num_steps={steps}")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), PYTHONUNBUFFERED="1")
        load0, t0 = os.getloadavg(), time.monotonic()
        proc = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            return {"device": device, "error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
        rows = [json.loads(line) for f in sorted(Path(tmp, "logs").glob("exp_*/metrics.jsonl"))
                for line in f.read_text().splitlines()]
    train = [r for r in rows if "train/reward" in r]
    val = [r for r in rows if "validation/accuracy" in r]
    step_time = sum(r["timing/train/total_step_time"] for r in train)
    k = max(1, min(10, len(train) // 5))
    return {
        "device": device, "steps": len(train), "wall_s": round(wall, 1),
        "steps_per_s": round(len(train) / step_time, 2), "steps_per_s_wall": round(len(train) / wall, 2),
        "peak_mib": round(max(r["memory/peak_mib"] for r in train), 1),
        f"reward_first{k}": round(sum(r["train/reward"] for r in train[:k]) / k, 3),
        f"reward_last{k}": round(sum(r["train/reward"] for r in train[-k:]) / k, 3),
        "val_accuracy": [(r["step"], round(r["validation/accuracy"], 3)) for r in val],
        "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    ap.add_argument("--steps", type=int, default=None, help="grpo.max_num_steps (default: the config's)")
    ap.add_argument("overrides", nargs="*", help="extra overrides after --")
    args = ap.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices:
        import torch
        if not torch.cuda.is_available():
            devices.remove("cuda")
            print("(no CUDA device: CPU only)")
    ok = True
    for device in devices:
        result = run_once(device, args.steps, list(args.overrides))
        ok &= "error" not in result
        print(f"== embedded GRPO workload, default config, device={device}")
        for key, value in result.items():
            print(f"  {key}: {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
