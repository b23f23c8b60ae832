"""`ops health`: the pure verdict table, the CLI over run files written by the supervisor's own writers, the
lock seen through /proc/locks from a real holder process, and a real supervisor whose trainer hangs and
which is then SIGKILLed."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.health import HealthLimits, RunSnapshot, find_latest, judge, lock_held
from ops.journal import Journal, write_json_atomic
from training.spec import RunPaths

REPO = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
L = HealthLimits(max_heartbeat_age_s=30, max_step_age_s=100, max_startup_s=600, max_busy_s=300)


def hb(age, state="RUNNING", step=3):
    return {"ts": NOW - age, "pid": 1, "state": state, "step": step, "attempt": 1}


@pytest.mark.parametrize("snap,status", [
    (RunSnapshot("e"), "no_run"),
    (RunSnapshot("e", hb(1)), "healthy"),
    (RunSnapshot("e", hb(1, "PREFLIGHT", None)), "healthy"),
    (RunSnapshot("e", hb(1, "RECOVERING")), "healthy"),
    (RunSnapshot("e", hb(1), attempt=1, attempt_start_wall=NOW - 500, last_step_wall=NOW - 50), "healthy"),
    (RunSnapshot("e", hb(1), attempt=1, attempt_start_wall=NOW - 500, last_step_wall=NOW - 101), "hung"),
    (RunSnapshot("e", hb(1), attempt=1, attempt_start_wall=NOW - 599), "healthy"),
    (RunSnapshot("e", hb(1), attempt=1, attempt_start_wall=NOW - 601), "hung"),
    (RunSnapshot("e", hb(1, "LAUNCHING"), attempt=1, attempt_start_wall=NOW - 9999), "healthy"),
    (RunSnapshot("e", hb(31), lock_held=True), "healthy"),                      # busy, e.g. dumping stacks
    (RunSnapshot("e", hb(299, "PREFLIGHT", None), lock_held=True), "healthy"),
    (RunSnapshot("e", hb(301), lock_held=True), "hung"),
    (RunSnapshot("e", None, {"state": "RUNNING"}, lock_held=True), "hung"),
    (RunSnapshot("e", hb(31), lock_held=False), "dead"),
    (RunSnapshot("e", hb(31), lock_held=None), "dead"),
    (RunSnapshot("e", None, {"state": "RUNNING", "step": 2}), "dead"),
    (RunSnapshot("e", hb(999, "SUCCEEDED")), "succeeded"),
    (RunSnapshot("e", hb(999, "FAILED_OOM"), {"reason": "OOM twice"}), "given_up"),
    (RunSnapshot("e", hb(1), run_end={"state": "CANCELLED", "reason": "SIGTERM"}), "given_up"),
    (RunSnapshot("e", hb(999), run_end={"state": "SUCCEEDED"}), "succeeded"),
])
def test_verdict_table(snap, status):
    v = judge(snap, L, NOW)
    assert v.status == status, v.reason
    assert v.is_healthy == (status in ("healthy", "succeeded"))
    assert v.reason and "\n" not in v.reason


def test_limits_refuse_non_positive():
    with pytest.raises(ValueError, match="max_step_age_s"):
        HealthLimits(max_step_age_s=0)


def ops_health(*args, cwd):
    p = subprocess.run([sys.executable, "-m", "ops.cli", "health", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    return p.returncode, p.stdout.strip(), p.stderr.strip()


def write_run(results: Path, exp: str, state: str, hb_age: float, end: str | None = None) -> RunPaths:
    """Run files as the supervisor writes them (ops.journal's writer; contracts.md shapes)."""
    paths = RunPaths(results / exp)
    paths.ops_dir.mkdir(parents=True)
    j = Journal(paths.journal, exp)
    j.append("run_start", 0, trainer="embedded", plan={}, argv=[], budget="", total_steps=4)
    j.append("attempt_start", 1, plan={}, argv=[], env={}, handle={}, resume_from_step=None)
    j.append("progress", 1, step=1, total_steps=4, reward=0.1)
    if end:
        j.append("run_end", 1, state=end, reason=f"the run ended {end}", steps_done=1, total_steps=4, wall_s=1)
    j.close()
    write_json_atomic(paths.state_file, {"run_id": exp, "state": end or state, "step": 1, "reason": None})
    (paths.ops_dir / "supervisor.lock").write_text("1")     # no longer held: its supervisor is gone
    write_json_atomic(paths.heartbeat, {"ts": time.time() - hb_age, "pid": 1, "state": end or state, "step": 1})
    return paths


def test_cli_verdicts_and_exit_codes(tmp_path):
    res = tmp_path / "results"
    write_run(res, "d/ok", "RUNNING", 0)
    rc, out, _ = ops_health("d/ok", "--results", str(res), cwd=tmp_path)
    assert rc == 0 and out.startswith("healthy: d/ok:")
    rc, out, _ = ops_health("d/ok", "--results", str(res), "--max-step-age-s", "0.001", cwd=tmp_path)
    assert rc == 1 and out.startswith("hung: d/ok: no new step")
    write_run(res, "d/oom", "RUNNING", 0, end="FAILED_OOM")
    rc, out, _ = ops_health("d/oom", "--results", str(res), "--json", cwd=tmp_path)
    v = json.loads(out)
    assert rc == 1 and v["status"] == "given_up" and v["state"] == "FAILED_OOM" and "FAILED_OOM" in v["reason"]
    write_run(res, "d/done", "RUNNING", 500, end="SUCCEEDED")
    assert ops_health("d/done", "--results", str(res), cwd=tmp_path)[0] == 0
    write_run(res, "d/stale", "RUNNING", 120)
    rc, out, _ = ops_health("d/stale", "--results", str(res), cwd=tmp_path)
    assert rc == 1 and re.match(r"dead: d/stale: supervisor gone: heartbeat 1[23]\d s old \(limit 30 s\)", out), out
    # env vars configure a probe without changing its command (Dockerfile HEALTHCHECK)
    p = subprocess.run([sys.executable, "-m", "ops.cli", "health", "d/stale"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO), "GRPO_OPS_RESULTS": str(res),
                                                   "GRPO_OPS_HEALTH_MAX_HEARTBEAT_AGE_S": "1000"})
    assert p.returncode == 0 and p.stdout.startswith("healthy"), p.stdout + p.stderr


def test_cli_no_run_and_bad_input(tmp_path):
    rc, out, err = ops_health(cwd=tmp_path)
    assert rc == 1 and out.startswith("no_run:")
    rc, out, err = ops_health("never/started", cwd=tmp_path)
    assert rc == 1 and out.startswith("no_run: never/started")
    rc, out, err = ops_health("--max-heartbeat-age-s", "-5", cwd=tmp_path)
    assert rc == 2 and err == "ops: error: --max-heartbeat-age-s must be > 0, got -5.0; pass a positive number of seconds"
    rc, out, err = ops_health("../outside", cwd=tmp_path)
    assert rc == 2 and "'../outside' is not allowed" in err and "Traceback" not in err


def test_latest_is_newest_heartbeat_and_checkpoints_are_skipped(tmp_path):
    res = tmp_path / "results"
    old = write_run(res, "20261125/embedded/a_001", "RUNNING", 0)
    new = write_run(res, "20261125/embedded/b_001", "RUNNING", 0)
    os.utime(old.heartbeat, (time.time() - 100, time.time() - 100))
    decoy = res / "20261125/embedded/a_001/step_3/ops"      # a checkpoint dir is never taken for a run
    decoy.mkdir(parents=True)
    (decoy / "heartbeat.json").write_text("{}")
    assert find_latest(res) == ("20261125/embedded/b_001", new)
    assert find_latest(tmp_path / "missing") is None


def test_lock_seen_from_a_real_holder(tmp_path):
    lock = tmp_path / "supervisor.lock"
    lock.write_text("")
    assert lock_held(lock) is False
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_held(lock) is True
    finally:
        holder.kill()
        holder.wait()
    assert lock_held(lock) is False
    assert lock_held(tmp_path / "absent.lock") is None


def wait_for(fn, timeout_s=90.0, every_s=0.3, probe=None):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"condition not met in {timeout_s} s; last probe: {probe() if probe else None}")


def test_real_supervisor_hung_then_dead(tmp_path):
    """A real supervisor over a trainer that hangs at step 2: healthy, then hung (no new step), then -- the
    supervisor SIGKILLed -- dead, because its heartbeat stops and its lock is released."""
    res = tmp_path / "results"
    res.mkdir()
    exp = "hb/hang_001"
    sup = subprocess.Popen([sys.executable, str(REPO / "tests" / "health_run.py"), str(res), exp, "hang_at=2"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    paths = RunPaths(res / exp)
    trainer_pgid = None
    try:
        probe = lambda: (ops_health(exp, "--results", str(res), cwd=tmp_path),  # noqa: E731
                         paths.output_log.read_text()[-2000:] if paths.output_log.exists() else None)
        wait_for(lambda: ops_health(exp, "--results", str(res), cwd=tmp_path)[0] == 0, probe=probe)
        rc, out, _ = wait_for(lambda: (r := ops_health(exp, "--results", str(res), "--max-step-age-s", "2",
                                                       cwd=tmp_path))[1].startswith("hung") and r, probe=probe)
        assert rc == 1 and "no new step" in out and "after step 1" in out
        start = next(r for r in map(json.loads, paths.journal.read_text().splitlines())
                     if r["kind"] == "attempt_start")
        trainer_pgid = start["handle"]["pgid"]
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait(timeout=30)
        rc, out, _ = wait_for(lambda: (r := ops_health(exp, "--results", str(res), "--max-heartbeat-age-s", "1",
                                                       cwd=tmp_path))[1].startswith("dead") and r, probe=probe)
        assert rc == 1 and "supervisor gone" in out and "RUNNING" in out
    finally:
        if sup.poll() is None:
            os.kill(sup.pid, signal.SIGKILL)
            sup.wait()
        if trainer_pgid:
            try:
                os.killpg(trainer_pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
