"""Time from a Ray job's failure to its relaunch through the Jobs API, printed. I/O: starts a loopback
two-node Ray cluster (tests/ray_nodes.py) unless --ray-address names one, submits jobs, reads their logs.

Each round, through `ops.backends.ray_job.RayJobBackend` (what `ops run --ray-address` uses):
  fail     the job's own wall clock just before it exits 1 (printed by the job)
  detect   RayJobHandle.poll() returns the Exit (status thread + log drained)
  submit   the relaunched job's submit_job returned
  start    the relaunched job's first line of Python ran (its own wall clock, printed by the job)
Reported: detect-fail, submit-detect, start-submit and the total start-fail (failure -> relaunched code runs).
Then the same through the supervisor (`ops run --ray-address` on the embedded workload, crash at step 2):
the journal's attempt_end -> attempt_start gap (classify, decide, clean up, submit).

    .venv/bin/python bench/ray_relaunch.py [--rounds 5] [--ray-address http://HEAD:8265] [--no-supervisor]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ops.backends.base import wait_exit  # noqa: E402
from ops.backends.ray_job import RayJobBackend  # noqa: E402
from training.spec import Launch  # noqa: E402

FAIL = "import time, os; print('FAILED_AT', repr(time.time()), flush=True); time.sleep(1.0); " \
       "print('FAILED_AT', repr(time.time()), flush=True); os._exit(1)"
START = "import time; print('STARTED_AT', repr(time.time()), flush=True)"


def _stamp(path: Path, key: str) -> float:
    vals = [float(line.split()[1]) for line in path.read_text().splitlines() if line.startswith(key + " ")]
    return vals[-1]


def _wait(handle, timeout_s: float = 300.0):
    found = wait_exit(handle, timeout_s, poll_s=0.01)
    if found is None:
        raise RuntimeError(f"job {handle.sid} did not end")
    return found


def one_round(backend: RayJobBackend, tmp: Path, n: int) -> dict:
    env = {"PATH": os.environ["PATH"], "GRPO_OPS_RUN_ID": "bench", "GRPO_OPS_ATTEMPT": str(2 * n)}
    a_log, b_log = tmp / f"a{n}.log", tmp / f"b{n}.log"
    failing = backend.spawn(Launch((sys.executable, "-c", FAIL), env, tmp, {"exp": "bench", "attempt": str(2 * n)}),
                            a_log)
    _wait(failing)
    t_detect = time.time()
    relaunched = backend.spawn(Launch((sys.executable, "-c", START), {**env, "GRPO_OPS_ATTEMPT": str(2 * n + 1)},
                                      tmp, {"exp": "bench", "attempt": str(2 * n + 1)}), b_log)
    t_submit = time.time()
    _wait(relaunched)
    t_fail, t_start = _stamp(a_log, "FAILED_AT"), _stamp(b_log, "STARTED_AT")
    return {"detect_s": t_detect - t_fail, "submit_s": t_submit - t_detect, "start_s": t_start - t_submit,
            "total_s": t_start - t_fail}


def supervisor_gap(address: str, tmp: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPO_OPS_ENABLE_FAULTS": "1"}
    p = subprocess.run([sys.executable, "-m", "ops.cli", "run", "--ray-address", address, "--skip-preflight",
                        "--grace-s", "3", "--exp", "bench/relaunch", "--", "++grpo.max_num_steps=3",
                        "++grpo.val_at_start=false", "++fault.crash_at_step=2", "++checkpointing.save_period=1"],
                       cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    recs = [json.loads(line) for line in (tmp / "results" / "bench" / "relaunch" / "ops" /
                                          "journal.jsonl").read_text().splitlines()]
    end = next(r for r in recs if r["kind"] == "attempt_end")
    start2 = [r for r in recs if r["kind"] == "attempt_start"][1]
    return {"rc": p.returncode, "end_to_start_s": start2["mono"] - end["mono"], "spawn_s": start2.get("spawn_s")}


def _fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):6.3f} s   min {min(xs):6.3f}   max {max(xs):6.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ray-address")
    ap.add_argument("--poll-s", type=float, default=0.5, help="RayJobBackend status poll (its default: 0.5)")
    ap.add_argument("--no-supervisor", action="store_true")
    a = ap.parse_args()
    cluster = None
    if not a.ray_address:
        from ray_nodes import start_cluster
        t0 = time.monotonic()
        cluster = start_cluster(extra_nodes=1)
        print(f"started a 2-node loopback cluster in {time.monotonic() - t0:.1f} s: {cluster.address}")
    address = a.ray_address or cluster.address
    try:
        backend = RayJobBackend(address, poll_s=a.poll_s)
        with tempfile.TemporaryDirectory(prefix="ray-relaunch-") as d:
            rows = [one_round(backend, Path(d), n) for n in range(a.rounds)]
            gap = None if a.no_supervisor else supervisor_gap(address, Path(d))
    finally:
        if cluster is not None:
            from ray_nodes import stop_cluster
            stop_cluster(cluster)
    print(f"ray job relaunch through the Jobs API ({a.rounds} rounds, poll_s={a.poll_s}, "
          f"{os.cpu_count()} CPUs, {datetime.now().isoformat(timespec='seconds')}):")
    for key, what in (("detect_s", "failure -> Exit seen"), ("submit_s", "Exit -> relaunch submitted"),
                      ("start_s", "submitted -> relaunched code runs"), ("total_s", "failure -> relaunched code runs")):
        print(f"  {what:36s} {_fmt([r[key] for r in rows])}")
    if gap is not None:
        print(f"  supervisor (ops run, crash at step 2): attempt_end -> attempt_start {gap['end_to_start_s']:.3f} s "
              f"(submit {gap['spawn_s']} s; run rc={gap['rc']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
