"""On the H100: start the embedded workload with a plan that does not fit the GPU, and show the supervisor
reaching a plan that fits in one run: retries, and the surviving micro batch as a fraction of the largest that
fits. Goal: at most 1 retry, at least 90%. Prints numbers; exit 0 when the goal holds, 1 otherwise.

    PYTHONPATH=. python bench/gpu_oom_recovery.py [--largest-fit N | --bisect-json FILE] [--start-micro-batch N]

The largest micro batch that fits comes from --largest-fit, from bench/gpu_bisect.py's JSON (--bisect-json,
key `largest_fit` / `largest_micro_batch`), or else from a bisection here over the valid micro batches (the
divisors of the global batch), each probe one real training step. Needs torch with CUDA and this repo's
Python deps (psutil, structlog, tenacity, omegaconf, pyyaml); no Ray. I/O: processes, GPU, files under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ops.backends.local import LocalBackend  # noqa: E402
from ops.budget import MaxAttempts  # noqa: E402
from ops.journal import read_journal  # noqa: E402
from ops.supervisor import Supervisor, SupervisorOptions  # noqa: E402
from training.embedded import EmbeddedTrainer  # noqa: E402
from training.spec import Plan, RunPaths  # noqa: E402

MB_KEY = "policy.train_micro_batch_size"
# A model big enough that a micro batch runs out of 80 GB well below the global batch (fp32, padded to 512).
MODEL = ["++policy.model.hidden_size=1024", "++policy.model.num_layers=8", "++policy.model.num_heads=16",
         "++policy.model.ffn_size=4096", "++policy.max_total_sequence_length=512", "++policy.logprob_batch_size=16",
         "++grpo.num_prompts_per_step=64", "++grpo.num_generations_per_prompt=8", "++grpo.val_at_start=false",
         "++grpo.val_period=1000", "++checkpointing.save_period=1000"]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --rehearse-cpu: the same flow on a CPU machine, the "device" being a cgroup memory limit (smaller model).
CPU_MODEL = ["++policy.model.hidden_size=256", "++policy.model.num_layers=2", "++policy.model.num_heads=4",
             "++policy.model.ffn_size=1024", "++policy.max_total_sequence_length=256", "++policy.logprob_batch_size=4",
             "++grpo.num_prompts_per_step=8", "++grpo.num_generations_per_prompt=8", "++grpo.val_at_start=false",
             "++grpo.val_period=1000", "++checkpointing.save_period=1000"]
SETUP = {"model": MODEL, "device": "cuda", "limit_mib": None, "gbs": 64 * 8}


def probe(mb: int, extra: list[str], out: Path) -> bool:
    """One real training step at micro batch `mb`: True when it finished, False when it ran out of memory."""
    from training.spec import Launch
    ckpt = out / f"probe_{mb}"
    argv = [sys.executable, "-m", "training.grpo", f"--config={EmbeddedTrainer().default_config()}",
            f"--device={SETUP['device']}", *SETUP["model"], *extra, "++grpo.max_num_steps=1", f"++{MB_KEY}={mb}",
            f"++checkpointing.checkpoint_dir={ckpt}", f"++logger.log_dir={ckpt}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "GRPO_OPS_RUN_ID": f"probe-{mb}", "GRPO_OPS_ATTEMPT": "1"}
    h = LocalBackend(SETUP["limit_mib"], run_dir=ckpt).spawn(Launch(tuple(argv), env, ROOT), out / f"probe_{mb}.log")
    while (ex := h.poll()) is None:
        time.sleep(0.2)
    h.terminate(2.0)
    text = (out / f"probe_{mb}.log").read_text(errors="replace")
    oom = ex.oom_killed or "out of memory" in text
    if ex.code != 0 and not oom:
        raise SystemExit(f"probe at micro batch {mb} failed for another reason:\n{text[-3000:]}")
    print(f"  probe micro batch {mb}: {'fits' if ex.code == 0 else 'out of memory'}", flush=True)
    return ex.code == 0


def bisect_largest(gbs: int, extra: list[str], out: Path) -> int:
    """The largest divisor of the global batch whose step fits (fitting is monotone in the micro batch)."""
    cands = divisors(gbs)
    lo, hi = 0, len(cands) - 1          # invariant: cands[lo] fits (checked below), answer <= cands[hi]
    if not probe(cands[0], extra, out):
        raise SystemExit("even micro batch 1 does not fit; shrink the model overrides")
    if probe(cands[hi], extra, out):
        return cands[hi]
    hi -= 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if probe(cands[mid], extra, out):
            lo = mid
        else:
            hi = mid - 1
    return cands[lo]


def largest_from_json(path: Path) -> int:
    data = json.loads(path.read_text())
    for key in ("largest_fit", "largest_micro_batch", "largest"):
        if key in data:
            return int(data[key])
    raise SystemExit(f"{path}: no largest_fit / largest_micro_batch key in {sorted(data)}")


def supervise(start_mb: int, extra: list[str], out: Path) -> tuple[object, list[dict], float]:
    paths = RunPaths(out / "recovery")
    spec = EmbeddedTrainer(device=SETUP["device"])
    plan = Plan(spec.default_config(),
                tuple(SETUP["model"] + extra + ["++grpo.max_num_steps=2", f"++{MB_KEY}={start_mb}"]))
    from healthchecks.gpu_seam import default_reader
    try:
        reader = default_reader()
    except Exception:
        reader = None
    sup = Supervisor(spec, LocalBackend(SETUP["limit_mib"], run_dir=paths.root), paths, plan, MaxAttempts(6), run_id="gpu-oom-recovery",
                     gpu_reader=reader, options=SupervisorOptions(hang_floor_s=600, startup_timeout_s=900, gpus=1))
    t0 = time.monotonic()
    outcome = sup.run()
    return outcome, read_journal(paths.journal), time.monotonic() - t0



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--largest-fit", type=int)
    ap.add_argument("--bisect-json", type=Path)
    ap.add_argument("--start-micro-batch", type=int, help="default: 2 x the largest that fits")
    ap.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--rehearse-cpu", type=int, metavar="LIMIT_MIB",
                    help="rehearse on a CPU machine: a smaller model, the device = a cgroup limit of LIMIT_MIB")
    ap.add_argument("extra", nargs="*", help="more overrides for both the bisection and the run")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_oom_recovery_"))
    out.mkdir(parents=True, exist_ok=True)
    if args.rehearse_cpu:
        SETUP.update(model=CPU_MODEL, device="cpu", limit_mib=args.rehearse_cpu, gbs=64)
    gbs = SETUP["gbs"]
    if args.largest_fit:
        largest, how = args.largest_fit, "--largest-fit"
    elif args.bisect_json:
        largest, how = largest_from_json(args.bisect_json), str(args.bisect_json)
    else:
        print(f"bisecting the largest micro batch that fits (divisors of the global batch {gbs}):", flush=True)
        t = time.monotonic()
        largest, how = bisect_largest(gbs, args.extra, out), f"bisection here ({time.monotonic() - t:.0f} s)"
    start = args.start_micro_batch or min(gbs, 2 * largest)
    print(f"largest micro batch that fits: {largest} ({how}); starting the run at {start}", flush=True)
    outcome, recs, wall = supervise(start, args.extra, out)
    starts = [r for r in recs if r["kind"] == "attempt_start"]
    for r in recs:
        if r["kind"] == "attempt_end" and r.get("failure"):
            f = r["failure"]
            print(f"attempt {r['attempt']}: {f['kind']} in {f['phase']}: {f['summary']}; numbers {f['numbers']}")
        if r["kind"] == "decision" and r["action"] == "relaunch":
            print(f"decision: {r['remedy']}: {r['reason']}")
    model_line = next((ln for ln in (out / "recovery" / "output.log").read_text().splitlines()
                       if "grpo-ops: memory model:" in ln), None)
    if model_line:
        from ops.watch import parse_memory_model
        m = parse_memory_model(model_line.split("memory model:", 1)[1])
        total = next((r["failure"]["numbers"].get("total_mib") or r["failure"]["numbers"].get("limit_mib") for r in recs
                      if r["kind"] == "attempt_end" and r.get("failure")), None)
        if total:
            pred = (total * 0.94 - m["static_mib"]) / m["per_sample_mib"]
            print(f"memory model alone: static {m['static_mib']:.0f} MiB + {m['per_sample_mib']:.0f} MiB/sample -> "
                  f"largest fit ~{pred:.0f} on {total:.0f} MiB (bisection: {largest})")
    final = int(next(o.split("=", 1)[1] for o in reversed(starts[-1]["plan"]["overrides"]) if MB_KEY in o))
    retries = len(starts) - 1
    frac = final / largest
    print(f"\noutcome: {outcome.state.value} in {wall:.0f} s; retries {retries} (goal <= 1); surviving micro batch "
          f"{final} = {frac:.0%} of the largest that fits, {largest} (goal >= 90%)")
    ok = outcome.ok and retries <= 1 and frac >= 0.9
    print("GOAL MET" if ok else "GOAL NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
