"""Supervisor benchmarks: detection latency (OOM, crash, hang), failure -> next trainer started, supervisor CPU
while watching, log pass-through throughput vs `tee`. Prints numbers; asserts nothing.

    .venv/bin/python bench/supervisor.py [--quick]

Each scenario runs the real supervisor (ops.supervisor.Supervisor, local backend) in this process against a
small real trainer script that prints NeMo RL's log lines and stamps the wall time of its fault in a file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ops.backends.local import LocalBackend  # noqa: E402
from ops.budget import MaxAttempts  # noqa: E402
from ops.supervisor import Supervisor, SupervisorOptions  # noqa: E402
from training.spec import Knob, Launch, Plan, RunPaths  # noqa: E402

TRAINER = textwrap.dedent(r'''
    import json, os, sys, time
    cfg = json.loads(sys.argv[1]); ckpt = cfg["ckpt"]; stamp = cfg["stamp"]
    fired = os.path.exists(stamp)
    print("grpo-ops: memory model: static_mib=100 per_sample_mib=10 device=cpu tp=1", flush=True)
    steps = cfg.get("steps", 5)
    for step in range(1, steps + 1):
        print(f"========================= Step {step}/{steps} =========================", flush=True)
        print("▶ Training policy...", flush=True)
        if not fired and step == cfg.get("fault_step", 0):
            open(stamp, "w").write(repr(time.time()))
            if cfg["fault"] == "oom":
                print("Traceback (most recent call last):\n  File \"t.py\", line 1, in <module>")
                print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                      "capacity of 79.19 GiB of which 1.06 GiB is free. Including non-PyTorch memory, this process "
                      "has 78.12 GiB memory in use.", flush=True)
                sys.exit(1)
            if cfg["fault"] == "crash":
                print("Traceback (most recent call last):\n  File \"t.py\", line 1, in <module>")
                print("RuntimeError: injected crash", flush=True)
                sys.exit(1)
            if cfg["fault"] == "hang":
                while True:
                    time.sleep(1)
        if cfg.get("spam_mb"):
            line = "x" * 199 + "\n"
            n = cfg["spam_mb"] * (1 << 20) // len(line)
            out = sys.stdout
            t0 = time.time()
            for _ in range(n):
                out.write(line)
            out.flush()
            open(cfg["ckpt"] + "/spam_s", "w").write(repr(time.time() - t0))
        time.sleep(cfg.get("step_s", 0.2))
        print(f"📊 Training Results:\n  • Avg Reward: 0.5\n⏱️  Timing:\n  • Total step time: {cfg.get('step_s', 0.2):.2f}s",
              flush=True)
''')


class BenchTrainer:
    name = "bench"
    knobs = (Knob("micro_batch", "micro_batch"),)
    signatures = ()

    def __init__(self, script: Path, cfg: dict):
        self.script, self.cfg = script, cfg

    def default_config(self) -> Path:
        return self.script

    def resolve(self, plan: Plan) -> dict:
        return {"micro_batch": 8, "global_batch": 8}

    def constraint_violations(self, cfg, gpus=None) -> list[str]:
        return []

    def launch(self, plan: Plan, paths: RunPaths, base_env, first: bool) -> Launch:
        return Launch((sys.executable, str(self.script), json.dumps(self.cfg)), dict(base_env), paths.root)


def run_scenario(tmp: Path, name: str, cfg: dict, **opts) -> dict:
    script = tmp / "trainer.py"
    script.write_text(TRAINER)
    root = tmp / name
    cfg = {**cfg, "ckpt": str(root), "stamp": str(root / "fault_at")}
    events: dict[str, list[float]] = {}

    def listener(rec: dict) -> None:
        events.setdefault(rec["kind"], []).append(time.time())
    options = SupervisorOptions(**{"poll_s": 0.2, "sample_s": 1.0, "grace_s": 2.0, "hang_floor_s": 1.0,
                                   "startup_timeout_s": 30.0, **opts})
    sup = Supervisor(BenchTrainer(script, cfg), LocalBackend(), RunPaths(root), Plan(script), MaxAttempts(3),
                     run_id=f"bench-{name}-{os.getpid()}", listeners=[listener], options=options)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    out = sup.run()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    fault_at = float((root / "fault_at").read_text()) if (root / "fault_at").exists() else None
    return {"outcome": out, "events": events, "fault_at": fault_at, "wall_s": time.time() - t0,
            "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), "root": root}


def detection(tmp: Path, fault: str, reps: int) -> tuple[list[float], list[float]]:
    detect, restart = [], []
    for i in range(reps):
        r = run_scenario(tmp, f"{fault}{i}", {"fault": fault, "fault_step": 2, "steps": 3, "step_s": 0.1})
        ends, starts = r["events"]["attempt_end"], r["events"]["attempt_start"]
        detect.append(ends[0] - r["fault_at"])
        restart.append(starts[1] - r["fault_at"])
    return detect, restart


def hang(tmp: Path, step_s: float, floor_s: float) -> dict:
    r = run_scenario(tmp, "hang", {"fault": "hang", "fault_step": 5, "steps": 6, "step_s": step_s},
                     hang_floor_s=floor_s, hang_factor=3.0)
    budget = max(3 * step_s, floor_s)
    # the hang starts right after step 5 is announced; the clock counts from that announcement
    return {"detect_s": r["events"]["attempt_end"][0] - r["fault_at"], "budget_s": budget}


def cpu_while_watching(tmp: Path, seconds: float) -> float:
    """Supervisor CPU between attempt_start and attempt_end (the watch), as % of one core."""
    steps = max(2, int(seconds / 1.0))
    marks: list[tuple[float, float]] = []

    def mark(rec: dict) -> None:
        if rec["kind"] in ("attempt_start", "attempt_end"):
            ru = resource.getrusage(resource.RUSAGE_SELF)
            marks.append((time.monotonic(), ru.ru_utime + ru.ru_stime))
    script = tmp / "trainer.py"
    script.write_text(TRAINER)
    root = tmp / "cpu"
    cfg = {"fault": "none", "steps": steps, "step_s": 1.0, "ckpt": str(root), "stamp": str(root / "x")}
    Supervisor(BenchTrainer(script, cfg), LocalBackend(), RunPaths(root), Plan(script), MaxAttempts(1),
               run_id=f"bench-cpu-{os.getpid()}", listeners=[mark],
               options=SupervisorOptions(poll_s=0.2, sample_s=1.0)).run()
    (w0, c0), (w1, c1) = marks[0], marks[-1]
    return 100.0 * (c1 - c0) / (w1 - w0)


def throughput(tmp: Path, mb: int) -> tuple[float, float]:
    """MB/s the trainer achieves writing its log: straight into output.log under the supervisor, vs piped
    through `tee` (the tutorial's `&> output.log` plus a live view). Timed inside the trainer."""
    cfg = {"fault": "none", "steps": 1, "step_s": 0.0, "spam_mb": mb}
    r = run_scenario(tmp, "tput", cfg)
    sup_s = float((r["root"] / "spam_s").read_text())
    script = tmp / "trainer.py"
    (tmp / "tee").mkdir(exist_ok=True)
    full = json.dumps({**cfg, "ckpt": str(tmp / "tee"), "stamp": str(tmp / "tee" / "x")})
    subprocess.run(f"{sys.executable} {script} '{full}' | tee {tmp / 'tee' / 'out.log'} > /dev/null", shell=True,
                   check=True)
    tee_s = float((tmp / "tee" / "spam_s").read_text())
    return mb / sup_s, mb / tee_s


def scan_rate(mb: int) -> float:
    """MB/s one core of the supervisor digests (signatures incl. NeMo RL's, step cues) on plain log lines."""
    from ops.watch import CUE_RX, EvidenceBuffer, matching_lines
    try:
        from training.nemo_rl import SIGNATURES as sigs
    except ImportError:
        sigs = ()
    lines = [f"(VllmAsyncGenerationWorker pid=1234) INFO 11-25 13:00:00 request {i} finished in 0.12 s " + "y" * 100
             for i in range(5000)]
    buf, size = EvidenceBuffer(sigs), sum(len(ln) + 1 for ln in lines)
    n = max(1, mb * (1 << 20) // size)
    t0 = time.process_time()
    for _ in range(n):
        buf.add_many(lines)
        matching_lines(lines, CUE_RX)
    return n * size / (1 << 20) / (time.process_time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 2 if args.quick else 5
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; poll 0.2 s")
        for fault in ("oom", "crash"):
            det, rst = detection(tmp, fault, reps)
            print(f"{fault:5s} detection latency: median {statistics.median(det):.3f} s, max {max(det):.3f} s "
                  f"(goal <= 1 s) | failure -> next trainer started: median {statistics.median(rst):.3f} s, "
                  f"max {max(rst):.3f} s (goal <= 3 s)")
        h = hang(tmp, step_s=0.3, floor_s=2.0)
        print(f"hang  detection: {h['detect_s']:.2f} s after the hang began; deadline max(3 x median step, floor) = "
              f"{h['budget_s']:.2f} s (goal: within it + one poll)")
        cpu = cpu_while_watching(tmp, 10 if args.quick else 30)
        print(f"supervisor CPU while watching: {cpu:.2f}% of one core (goal <= 1%)")
        print(f"supervisor log scanning: {scan_rate(20 if args.quick else 100):.0f} MB/s of one core")
        sup_mbs, tee_mbs = throughput(tmp, 100 if args.quick else 400)
        print(f"log pass-through: {sup_mbs:.0f} MB/s under the supervisor vs {tee_mbs:.0f} MB/s through tee "
              f"= {sup_mbs / tee_mbs:.2f}x (goal >= 0.8x)")


if __name__ == "__main__":
    main()
