"""Issue 9: an OOM at tensor_parallel_size=1 recovered by raising TP, on N devices. Prints figures. Does I/O.

The scenario, for any number of devices:
1. warm-up: the embedded workload at TP=1 and a short sequence length fits on one device and leaves a
   checkpoint (`step_K`) in the experiment directory (a plain `python -m training.grpo` launch);
2. `ops run` continues it at the full sequence length: at TP=1 one device cannot hold the activations (a real
   OOM: CUDA's allocator, or on CPU the rank's memory cgroup OOM killer); the supervisor must relaunch at TP=2
   with the same global batch, resume from step_K, and finish.
Devices: CUDA with >= 2 GPUs (NCCL, one rank per GPU; the model is sized from the smallest GPU's memory by a
probe on GPU 0) or, without GPUs, gloo ranks on CPU, each rank standing for one device with its own memory
cgroup of `cluster.cpu_device_memory_mib` MiB. Per-device memory is sampled while it runs (NVML through the GPU
seam; on CPU the rank cgroups' max usage: v1 memory.max_usage_in_bytes, v2 memory.peak). Figures: retries, TP
chosen, global batch, per-device peak memory before and after, time to recover; `ops preflight --json`'s
per-GPU checks.

    PYTHONPATH=. .venv/bin/python bench/multi_gpu_tp.py [--device auto|cpu|cuda] [--work DIR] [--json-out F]
    PYTHONPATH=. python bench/multi_gpu_tp.py --probe      # one GPU: the calibration and the sizing it implies
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
TP_KEY = "policy.dtensor_cfg.tensor_parallel_size"
EXP = "tp-proof"


@dataclasses.dataclass(frozen=True)
class Scenario:
    device: str                       # "cpu" | "cuda"
    devices: int                      # GPUs visible (CUDA); ranks the CPU stand-in may use
    shape: tuple[str, ...]            # overrides shared by warm-up and run: model, batch, steps
    warm_seq_len: int
    seq_len: int
    warm_steps: int
    total_steps: int
    limit_mib: int | None             # CPU: the per-rank device limit; CUDA: None (the card's own memory)
    capacity_mib: float               # what one device offers (CPU: the limit; CUDA: the smallest card's total)
    note: str = ""

    def common(self) -> list[str]:
        out = [*self.shape, f"++grpo.max_num_steps={self.total_steps}"]
        return out + ([f"++cluster.cpu_device_memory_mib={self.limit_mib}"] if self.limit_mib else [])


# ------------------------------------------------------------------ sizing (pure, except the CUDA probe)
def cpu_scenario(base_mib: float = 130.0) -> Scenario:
    """Attention-heavy (16 heads, 512 tokens): the per-device peak at TP=2 is about half of TP=1's. The limit
    sits halfway between the memory model's TP=1 and TP=2 peaks plus the rank's baseline (~130 MiB of memcg
    usage measured for a torch rank on this machine)."""
    from training.grpo.memory import per_sample_mib, static_mib
    from training.grpo.model import ModelShape
    from training.grpo.task import Vocab
    mb, heads, seq = 8, 16, 512
    shape = ["++grpo.num_prompts_per_step=2", "++grpo.num_generations_per_prompt=4", "++grpo.val_at_start=false",
             f"++policy.train_micro_batch_size={mb}", f"++policy.logprob_batch_size={mb}",
             f"++policy.model.num_heads={heads}"]
    peak = {tp: static_mib(ModelShape(len(Vocab()), 64, 2, heads, 256, tp), False)
            + mb * per_sample_mib(ModelShape(len(Vocab()), 64, 2, heads, 256, tp), seq, False) for tp in (1, 2)}
    limit = int(base_mib + (peak[1] + peak[2]) / 2)
    note = (f"memory model: TP=1 {peak[1]:.0f} MiB, TP=2 {peak[2]:.0f} MiB per device (+ ~{base_mib:.0f} MiB "
            f"baseline); device limit {limit} MiB")
    return Scenario("cpu", 2, tuple(shape), 64, seq, 2, 4, limit, float(limit), note)


def cuda_scenario(gpus: int, probe: dict, target: float = 1.3) -> Scenario:
    """Layers chosen so the probed TP=1 peak is `target` x the smallest card (the attention scores, ~1/tp of
    the activations, dominate, so TP=2 needs a bit over half of it)."""
    per_layer, base, cap = probe["per_layer_mib"], probe["base_mib"], probe["capacity_mib"]
    layers = max(2, round((target * cap - base) / per_layer))
    shape = ["++grpo.num_prompts_per_step=2", "++grpo.num_generations_per_prompt=4", "++grpo.val_at_start=false",
             f"++policy.train_micro_batch_size={probe['mb']}", f"++policy.logprob_batch_size={probe['mb']}",
             f"++policy.model.hidden_size={probe['hidden']}", f"++policy.model.num_heads={probe['heads']}",
             f"++policy.model.ffn_size={probe['ffn']}", f"++policy.model.num_layers={layers}",
             f"++cluster.gpus_per_node={gpus}"]
    tp1 = base + layers * per_layer
    note = (f"probe on GPU 0: {base:.0f} MiB + {per_layer:.0f} MiB/layer at micro batch {probe['mb']} x "
            f"{probe['seq']} tokens; {layers} layers -> TP=1 needs ~{tp1:.0f} MiB of {cap:.0f} MiB; TP=2 ~"
            f"{tp1 * probe['tp2_ratio']:.0f} MiB per GPU")
    return Scenario("cuda", gpus, tuple(shape), 256, probe["seq"], 2, 4, None, cap, note)


def cuda_probe(hidden=512, heads=32, ffn=2048, seq=2048, mb=8) -> dict:
    """Peak CUDA memory of one training micro step (forward, backward, AdamW) at 1 and 2 layers (GPU 0).
    Many narrow heads: the L^2 attention scores (split by TP) dominate; parameters stay small (fast saves)."""
    import torch
    from training.grpo.memory import per_sample_mib
    from training.grpo.model import ModelShape, Policy
    from training.grpo.task import Vocab
    peaks = {}
    for layers in (1, 2):
        shape = ModelShape(len(Vocab()), hidden, layers, heads, ffn)
        model = Policy(shape).cuda()
        opt = torch.optim.AdamW(model.parameters())
        tokens = torch.randint(0, shape.vocab_size, (mb, seq), device="cuda")
        for _ in range(2):                       # the second step has the optimizer state allocated
            torch.cuda.reset_peak_memory_stats()
            model(tokens).float().logsumexp(-1).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        peaks[layers] = torch.cuda.max_memory_allocated() / 2**20
        del model, opt, tokens
        torch.cuda.empty_cache()
    cap = min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())) / 2**20
    ratio = (per_sample_mib(ModelShape(len(Vocab()), hidden, 1, heads, ffn, 2), seq, False)
             / per_sample_mib(ModelShape(len(Vocab()), hidden, 1, heads, ffn, 1), seq, False))
    return {"per_layer_mib": peaks[2] - peaks[1], "base_mib": 2 * peaks[1] - peaks[2], "capacity_mib": cap,
            "hidden": hidden, "heads": heads, "ffn": ffn, "seq": seq, "mb": mb, "tp2_ratio": ratio}


# ------------------------------------------------------------------ per-device memory sampling (I/O)
class DeviceSampler:
    """Samples per-device memory every `period_s` on a thread: (monotonic time, key, device, MiB). CPU: the
    rank cgroups `grpo-ops-<launcher pid>-rank<r>` (key = launcher pid) of this process's memory cgroup;
    CUDA: NVML used memory per GPU (key None)."""

    def __init__(self, device: str, period_s: float = 0.05):
        self.device, self.period_s, self.samples = device, period_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        if device == "cpu":
            from training.grpo.parallel import own_memory_cgroup
            found = own_memory_cgroup()
            self.parent = found[0] if found else None
        else:
            from healthchecks.gpu_seam import default_reader
            self.reader = default_reader()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                self.samples += self._read(now)
            except Exception:                 # a cgroup removed between glob and read, NVML hiccup
                pass
            self._stop.wait(self.period_s if self.device == "cpu" else max(self.period_s, 0.25))

    def _read(self, now: float) -> list[tuple]:
        if self.device == "cuda":
            return [(now, None, f"GPU {g.index}", float(g.memory_used_mib)) for g in self.reader.snapshot().gpus]
        out = []
        for path in glob.glob(str(self.parent / "grpo-ops-*-rank*")) if self.parent else ():
            m = re.search(r"grpo-ops-(\d+)-rank(\d+)$", path)
            used = _first_number(Path(path), ("memory.max_usage_in_bytes", "memory.peak", "memory.current"))
            if used is not None:
                out.append((now, int(m.group(1)), f"rank {m.group(2)}", used / 2**20))
        return out

    def peaks(self, key: int | None = None, t0: float = 0.0, t1: float = float("inf")) -> dict[str, float]:
        out: dict[str, float] = {}
        for t, k, dev, mib in self.samples:
            if (key is None or k == key) and t0 <= t <= t1:
                out[dev] = round(max(out.get(dev, 0.0), mib), 1)
        return dict(sorted(out.items()))


def _first_number(cgroup: Path, names: tuple[str, ...]) -> int | None:
    """The first of these cgroup files that exists (v1 max usage, v2 peak, v2 current)."""
    for name in names:
        try:
            return int((cgroup / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


# ------------------------------------------------------------------ the two stages (I/O)
def _env(sc: Scenario) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)   # keep a --target site
    env = {**os.environ, "PYTHONPATH": path, **(NCCL_ENV if sc.device == "cuda" else {})}
    for k in ("GRPO_OPS_ENABLE_FAULTS", "WANDB_API_KEY"):   # no fault injection here; no W&B from a bench
        env.pop(k, None)
    return env


def warm_up(sc: Scenario, run_dir: Path, sampler: DeviceSampler) -> dict:
    """TP=1 at the short sequence length into run_dir (checkpoint step_K). Returns its figures."""
    argv = [sys.executable, "-m", "training.grpo", f"--device={sc.device}", *sc.common(),
            f"++grpo.max_num_steps={sc.warm_steps}", f"++checkpointing.save_period={sc.warm_steps}",
            f"++policy.max_total_sequence_length={sc.warm_seq_len}", f"++{TP_KEY}=1",
            f"++checkpointing.checkpoint_dir={run_dir}", f"++logger.log_dir={run_dir / 'warmup'}"]
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(run_dir / "warmup.log", "w") as log:
        p = subprocess.Popen(argv, cwd=run_dir, env=_env(sc), stdout=log, stderr=subprocess.STDOUT)
        rc = p.wait(timeout=1800)
    if rc != 0 or not (run_dir / f"step_{sc.warm_steps}").is_dir():
        raise SystemExit(f"warm-up failed (exit {rc}); see {run_dir / 'warmup.log'}")
    return {"wall_s": round(time.monotonic() - t0, 1), "step": sc.warm_steps,
            "peak_mib": sampler.peaks(p.pid if sc.device == "cpu" else None, t0)}


def supervise(sc: Scenario, results: Path) -> tuple[int, str]:
    """`ops run` at the full sequence length from the warm-up's checkpoint. The preflight is shown separately
    (`preflight`), so it does not gate here: a host check unrelated to the GPUs must not end the proof."""
    argv = [sys.executable, "-m", "ops.cli", "run", "--exp", EXP, "--results", str(results), "--no-wandb",
            "--max-attempts", "4", "--grace-s", "5", "--startup-timeout-s", "1200", "--skip-preflight",
            *([f"--gpus={sc.devices}"] if sc.device == "cuda" else []),
            "--", *sc.common(), f"++policy.max_total_sequence_length={sc.seq_len}", f"++{TP_KEY}=1"]
    p = subprocess.run(argv, cwd=results.parent, env=_env(sc), capture_output=True, text=True, timeout=3600)
    return p.returncode, (p.stdout + p.stderr)[-3000:]


def preflight(sc: Scenario) -> list[str]:
    """`ops preflight --json`: one line per GPU-related check, one per card where the check has per-GPU data."""
    argv = [sys.executable, "-m", "ops.cli", "preflight", "--json",
            *([f"--gpus={sc.devices}", "--require-gpu"] if sc.device == "cuda" else [])]
    p = subprocess.run(argv, cwd=REPO, env=_env(sc), capture_output=True, text=True, timeout=600)
    try:
        results = json.loads(p.stdout)["results"]
    except (ValueError, KeyError):
        return [f"ops preflight --json failed (exit {p.returncode}): {p.stderr.strip()[-300:]}"]
    lines = [f"ops preflight --json: exit {p.returncode}"]
    for r in results:
        if r["name"] in ("gpu", "cuda_arch", "gpu_memory", "gpu_health"):
            lines.append(f"  {r['status']:7} {r['name']}: {r['detail']}")
            for g in (r.get("data") or {}).get("gpus", []) if isinstance(r.get("data"), dict) else []:
                lines.append("      " + ", ".join(f"{k}={v}" for k, v in g.items() if v not in (None, [], "")))
    return lines


# ------------------------------------------------------------------ figures from the journal (reads files)
def _attempt_peaks(sc: Scenario, sampler: DeviceSampler, start: dict, end: dict) -> dict[str, float]:
    key = start.get("handle", {}).get("pid") if sc.device == "cpu" else None
    return sampler.peaks(key, start["mono"], end["mono"] + 1.0)


def figures(sc: Scenario, run_dir: Path, warm: dict, sampler: DeviceSampler, wall_s: float) -> dict:
    from ops.journal import read_journal
    from training.embedded import EmbeddedTrainer
    from training.spec import Plan
    recs = read_journal(run_dir / "ops" / "journal.jsonl")
    by = lambda k: [r for r in recs if r["kind"] == k]                      # noqa: E731
    starts, ends, decisions, end = by("attempt_start"), by("attempt_end"), by("decision"), by("run_end")
    cfgs = [EmbeddedTrainer().resolve(Plan.from_json(s["plan"])) for s in starts]
    pol = lambda i, k: cfgs[i]["policy"][k]                                 # noqa: E731
    fail = ends[0]["failure"] or {}
    limit = re.search(r"limit (\d+) MiB", " ".join(fail.get("evidence_lines", [])))
    last = starts[-1]["attempt"]
    first_step = next((r for r in by("progress") if r["attempt"] == last), None)
    fig = {
        "device": sc.device, "devices": sc.devices, "run_dir": str(run_dir), "scenario": sc.note,
        "state": end[0]["state"] if end else None, "attempts": len(starts), "retries": len(starts) - 1,
        "warmup_step": warm["step"], "total_steps": end[0]["total_steps"] if end else None,
        "resume_from_step": [s["resume_from_step"] for s in starts],
        "remedies": [d.get("remedy") for d in decisions if d["action"] == "relaunch"],
        "plan_diff": [d.get("plan_diff") for d in decisions if d["action"] == "relaunch"],
        "tp": {"before": pol(0, "dtensor_cfg")["tensor_parallel_size"],
               "after": pol(-1, "dtensor_cfg")["tensor_parallel_size"]},
        "global_batch": {"before": pol(0, "train_global_batch_size"), "after": pol(-1, "train_global_batch_size")},
        "micro_batch": {"before": pol(0, "train_micro_batch_size"), "after": pol(-1, "train_micro_batch_size")},
        "seq_len": {"warmup": sc.warm_seq_len, "run": sc.seq_len},
        "device_limit_mib": sc.limit_mib, "device_capacity_mib": round(sc.capacity_mib, 1),
        "oom": {"kind": fail.get("kind"), "phase": fail.get("phase"), "summary": fail.get("summary"),
                "numbers": fail.get("numbers"), "limit_mib": int(limit.group(1)) if limit else None},
        "device_peak_mib": {"warmup_tp1": warm["peak_mib"],
                            "oom_attempt_tp1": _attempt_peaks(sc, sampler, starts[0], ends[0]),
                            "after": _attempt_peaks(sc, sampler, starts[-1], ends[-1])},
        "trainer_peak_mib_after": _metrics_peak(run_dir),
        "memory_model_lines": re.findall(r"grpo-ops: memory model: (.*)", _read(run_dir / "output.log")),
        "time_to_recover_s": round(first_step["mono"] - ends[0]["mono"], 1) if first_step and ends else None,
        "detect_to_relaunch_s": round(starts[1]["mono"] - ends[0]["mono"], 1) if len(starts) > 1 else None,
        "oom_attempt_s": ends[0]["duration_s"], "warmup_wall_s": warm["wall_s"], "run_wall_s": round(wall_s, 1),
    }
    return fig


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _metrics_peak(run_dir: Path) -> float | None:
    """The trainer's own `memory/peak_mib` (max over ranks) in the last launch's metrics."""
    dirs = sorted(run_dir.glob("exp_*"))
    vals = [json.loads(ln).get("memory/peak_mib") for ln in _read(dirs[-1] / "metrics.jsonl").splitlines()
            if ln.strip()] if dirs else []
    vals = [v for v in vals if v is not None]
    return round(max(vals), 1) if vals else None


def render(fig: dict) -> str:
    peaks = fig["device_peak_mib"]
    show = lambda d: ", ".join(f"{k} {v:.0f}" for k, v in d.items()) or "n/a"   # noqa: E731
    oom = fig["oom"]
    return "\n".join([
        f"devices: {fig['devices']} x {fig['device']}; {fig['scenario']}",
        f"result: {fig['state']} after {fig['attempts']} attempt(s); retries {fig['retries']}; "
        f"remedies {fig['remedies']}; plan_diff {fig['plan_diff']}",
        f"TP chosen: {fig['tp']['before']} -> {fig['tp']['after']}; global batch {fig['global_batch']['before']} -> "
        f"{fig['global_batch']['after']}; micro batch {fig['micro_batch']['before']} -> "
        f"{fig['micro_batch']['after']}",
        f"checkpoint: warm-up to step {fig['warmup_step']} (TP=1, {fig['seq_len']['warmup']} tokens); attempts "
        f"resumed from {fig['resume_from_step']}; finished at step {fig['total_steps']} ({fig['seq_len']['run']} "
        "tokens)",
        f"OOM at TP=1: {oom['kind']} in {oom['phase']}: {oom['summary']}",
        f"per-device peak MiB: warm-up TP=1: {show(peaks['warmup_tp1'])} | OOM attempt TP=1: "
        f"{show(peaks['oom_attempt_tp1'])} | after TP={fig['tp']['after']}: {show(peaks['after'])} "
        f"(the trainer's memory/peak_mib {fig['trainer_peak_mib_after']}: CPU ru_maxrss, which also counts shared "
        "library pages the cgroup does not charge; CUDA max_memory_allocated); device "
        + (f"limit {fig['device_limit_mib']} MiB" if fig["device_limit_mib"] else
           f"capacity {fig['device_capacity_mib']:.0f} MiB"),
        f"memory model lines: {fig['memory_model_lines']}",
        f"time to recover (OOM detected -> first step at TP={fig['tp']['after']}): {fig['time_to_recover_s']} s "
        f"(detect -> relaunch {fig['detect_to_relaunch_s']} s); OOM attempt {fig['oom_attempt_s']} s; warm-up "
        f"{fig['warmup_wall_s']} s; ops run {fig['run_wall_s']} s",
    ])


# ------------------------------------------------------------------ entry
def visible_gpus() -> int:
    try:
        from healthchecks.gpu_seam import default_reader
        return len(default_reader().snapshot().gpus)
    except Exception:
        return 0


def scenario_for(device: str) -> Scenario:
    gpus = visible_gpus()
    if device == "auto":
        device = "cuda" if gpus >= 2 else "cpu"
        if gpus == 1:
            print("one GPU visible: the multi-GPU scenario needs >= 2; running the CPU stand-in", flush=True)
    if device == "cpu":
        return cpu_scenario()
    if gpus < 2:
        raise SystemExit(f"--device cuda needs >= 2 visible GPUs, found {gpus}; use --device cpu")
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe"], env={**os.environ, **NCCL_ENV},
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"CUDA probe failed: {p.stderr.strip()[-500:]}")
    return cuda_scenario(gpus, json.loads(p.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--work", type=Path, help="working directory (default: a new temp dir, kept)")
    ap.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--skip-preflight", action="store_true", help="do not run and show `ops preflight --json`")
    ap.add_argument("--probe", action="store_true", help="CUDA: only measure GPU 0 and print the sizing (JSON)")
    args = ap.parse_args(argv)
    if args.probe:                       # also useful alone on one GPU: checks the sizing for 2 cards like it
        probe = cuda_probe()
        print(f"sizing for 2 GPUs like GPU 0: {cuda_scenario(2, probe).note}", file=sys.stderr)
        print(json.dumps(probe))
        return 0
    sc = scenario_for(args.device)
    work = (args.work or Path(tempfile.mkdtemp(prefix="tp-proof-"))).resolve()
    results, print_ = work / "results", (lambda s: print(s, flush=True))
    run_dir = results / EXP
    print_(f"work dir {work}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {sc.note}")
    if not args.skip_preflight:
        print_("\n".join(preflight(sc)))
    with DeviceSampler(sc.device) as sampler:
        warm = warm_up(sc, run_dir, sampler)
        print_(f"warm-up: step_{warm['step']} saved in {warm['wall_s']} s; peak {warm['peak_mib']}")
        t0 = time.monotonic()
        rc, tail = supervise(sc, results)
        wall = time.monotonic() - t0
    if not (run_dir / "ops" / "journal.jsonl").exists():
        raise SystemExit(f"ops run left no journal (exit {rc}):\n{tail}")
    fig = figures(sc, run_dir, warm, sampler, wall)
    print_(render(fig))
    if args.json_out:
        args.json_out.write_text(json.dumps(fig, indent=1))
    if rc != 0:
        print_(f"ops run exit {rc}:\n{tail}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
