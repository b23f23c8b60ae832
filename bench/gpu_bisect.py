"""Find, with real CUDA OOMs, the largest policy.train_micro_batch_size that fits one GPU for a stated config.

    PYTHONPATH=. python bench/gpu_bisect.py [--config training/configs/grpo_workplace_h100_large.yaml]
                                            [--budget-s 220] [-- extra overrides]

Each probe is a fresh `python -m training.grpo --device=cuda` process running 2 GRPO steps (AdamW's state
exists from the first optimizer step on, so the second step holds the true peak) with
`train_micro_batch_size=M`, `train_global_batch_size=M`, `num_prompts_per_step=M`, one generation per prompt:
exactly one micro batch of M samples per optimizer step. A probe fits when it exits 0; it is too large when
it dies with PyTorch's `torch.OutOfMemoryError`. The search gallops from the workload's own memory-model
prediction, then bisects. Per probe it prints M, fit/OOM, the measured peak (max_memory_allocated) and the
memory model's prediction (static + M * per_sample); at the end the largest M that fits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LARGE = REPO / "training" / "configs" / "grpo_workplace_h100_large.yaml"
MAX_M = 232                                   # prompts per step cannot exceed the task's train split


def probe(config: Path, m: int, extra: list[str], timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="grpo-bisect-") as tmp:
        argv = [sys.executable, "-m", "training.grpo", f"--config={config}", "--device=cuda",
                f"policy.train_micro_batch_size={m}", f"policy.train_global_batch_size={m}",
                f"grpo.num_prompts_per_step={m}", "grpo.num_generations_per_prompt=1", "grpo.max_num_steps=2",
                "checkpointing.enabled=false", *extra, f"++checkpointing.checkpoint_dir={tmp}/ckpt",
                f"++logger.log_dir={tmp}/logs"]
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, cwd=tmp, env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))), capture_output=True,
                               text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"m": m, "fits": None, "why": "timeout", "wall_s": round(time.monotonic() - t0, 1)}
        rows = [json.loads(line) for f in Path(tmp, "logs").glob("exp_*/metrics.jsonl")
                for line in f.read_text().splitlines()]
    out = {"m": m, "wall_s": round(time.monotonic() - t0, 1)}
    model = re.search(r"static_mib=([\d.]+) per_sample_mib=([\d.]+)", p.stdout)
    if model:
        out["predicted_mib"] = round(float(model.group(1)) + m * float(model.group(2)))
    peaks = [r["memory/peak_mib"] for r in rows if "memory/peak_mib" in r]
    if peaks:
        out["peak_mib"] = round(max(peaks))
    if p.returncode == 0:
        out["fits"] = True
    elif "OutOfMemoryError" in p.stderr or "CUDA out of memory" in p.stderr:
        out["fits"] = False
        tried = re.search(r"Tried to allocate ([\d.]+ [GM]iB)", p.stderr)
        out["why"] = "torch.OutOfMemoryError" + (f" (tried to allocate {tried.group(1)})" if tried else "")
    else:
        out["fits"] = None
        out["why"] = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:200]
    return out


def predicted_fit(config: Path, extra: list[str]) -> int:
    """Where to start: the workload's memory model against the GPU's capacity."""
    import torch

    from training.config import resolve
    from training.grpo.checks import model_shape
    from training.grpo.memory import per_sample_mib, static_mib
    cfg = resolve(config, extra)
    shape = model_shape(cfg)
    bf16 = cfg["policy"].get("precision") in ("bfloat16", "bf16")
    per = per_sample_mib(shape, int(cfg["policy"]["max_total_sequence_length"]),
                         bool(cfg["policy"]["dtensor_cfg"].get("activation_checkpointing")), 2 if bf16 else 4)
    total = torch.cuda.get_device_properties(0).total_memory / 2**20
    return max(1, min(MAX_M, int((total * 0.9 - static_mib(shape, False)) / per)))


def search(config: Path, extra: list[str], budget_s: float) -> tuple[int | None, int | None]:
    """(largest M seen to fit, smallest M seen to OOM), galloping from the prediction, then bisecting."""
    start, deadline = time.monotonic(), time.monotonic() + budget_s
    fit, oom = None, None
    m = predicted_fit(config, extra)
    print(f"memory-model prediction: ~{m} samples per micro batch; probing", flush=True)
    while time.monotonic() < deadline:
        r = probe(config, m, extra, timeout_s=max(30.0, deadline - time.monotonic()))
        print(f"  M={r['m']:>4}  {'fits' if r['fits'] else 'OOM ' if r['fits'] is False else '??? '}  "
              f"peak={r.get('peak_mib', '-')} MiB  predicted={r.get('predicted_mib', '-')} MiB  "
              f"{r['wall_s']}s  {r.get('why', '')}  (t={time.monotonic() - start:.0f}s)", flush=True)
        if r["fits"] is None:
            raise SystemExit(f"probe M={m} failed for a reason other than OOM: {r.get('why')}")
        if r["fits"]:
            fit = max(fit or 0, m)
        else:
            oom = min(oom or MAX_M + 1, m)
        if oom is None:
            if m >= MAX_M:
                break
            m = min(MAX_M, m * 2)
        elif fit is None:
            m = max(1, m // 2) if m > 1 else 0
            if m == 0:
                break
        elif oom - fit <= 1:
            break
        else:
            m = (fit + oom) // 2
    return fit, oom


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=LARGE)
    ap.add_argument("--budget-s", type=float, default=220.0)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("gpu_bisect: no CUDA device visible; run this on the GPU machine", file=sys.stderr)
        return 1
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.total_memory / 2**30:.1f} GiB; torch {torch.__version__}; "
          f"config {args.config.name} {' '.join(args.overrides)}", flush=True)
    fit, oom = search(args.config, list(args.overrides), args.budget_s)
    exact = fit is not None and oom is not None and oom - fit == 1
    print(f"largest policy.train_micro_batch_size that fits: {fit} "
          f"({'exact' if exact else 'bounds only'}: {fit} fits, {oom} OOMs)")
    return 0 if fit is not None else 1


if __name__ == "__main__":
    sys.exit(main())
