"""`ops run` / status / logs / diagnose / clean as a person uses them: real subprocesses, real signals.
The trainer is tests/supervisor_fixture_trainer.py (registered through GRPO_OPS_TRAINERS)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ops.journal import read_journal

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
FIX = ["--trainer", "fixture", "--skip-preflight", "--hang-floor-s", "5", "--grace-s", "2"]


def env_for(tmp_path):
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{TESTS}",
            "GRPO_OPS_TRAINERS": "fixture=supervisor_fixture_trainer:FixtureTrainer", "HF_TOKEN": "hf_" + "x" * 30}


def ops(tmp_path, *args, **kw):
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=tmp_path, env=env_for(tmp_path),
                          capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def start(tmp_path, *args):
    return subprocess.Popen([sys.executable, "-m", "ops.cli", *args], cwd=tmp_path, env=env_for(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def state(tmp_path, exp):
    try:
        return json.loads((tmp_path / "results" / exp / "ops" / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def marked(run_id):
    """Live processes carrying GRPO_OPS_RUN_ID=run_id."""
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            env = open(f"/proc/{p.pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"GRPO_OPS_RUN_ID={run_id}".encode() in env and p.status() != psutil.STATUS_ZOMBIE:
            out.append(p.pid)
    return out


def test_run_status_logs_diagnose_clean(tmp_path):
    p = ops(tmp_path, "run", *FIX, "--exp", "e/ok", "--", "crash_at=2")
    assert p.returncode == 0, p.stderr
    assert "e/ok: SUCCEEDED after 2 attempt(s), step 4/4" in p.stdout
    s = ops(tmp_path, "status", "--json")
    data = json.loads(s.stdout)
    assert data["exp"] == "e/ok" and data["state"] == "SUCCEEDED" and data["last_failure"]["kind"] == "crash"
    assert "SUCCEEDED" in ops(tmp_path, "status", "e/ok").stdout
    logs = ops(tmp_path, "logs", "e/ok").stdout
    assert "### grpo-ops attempt 2" in logs and "Step 4/4" in logs
    log = tmp_path / "results" / "e" / "ok" / "output.log"
    d = ops(tmp_path, "diagnose", str(log), "--json")
    assert json.loads(d.stdout)["failure"] is None          # the last attempt succeeded
    crashed = tmp_path / "crash.log"
    crashed.write_text(log.read_text().split("### grpo-ops attempt 2")[0])
    d = ops(tmp_path, "diagnose", str(crashed), "--trainer", "fixture")
    assert "crash" in d.stdout and "injected crash at step 2" in d.stdout and "remedy: relaunch" in d.stdout
    c = ops(tmp_path, "clean", "e/ok", "--dry-run")
    assert c.returncode == 0 and "nothing left to clean" in c.stdout
    events = (tmp_path / "results" / "e" / "ok" / "ops" / "events.log").read_text()
    assert "relaunching" in events and "hf_xxxx" not in events


def test_sigterm_stops_the_whole_tree(tmp_path):
    proc = start(tmp_path, "run", *FIX, "--exp", "e/term", "--", "steps=200", "step_s=0.2", "leftover=1")
    assert wait_for(lambda: (state(tmp_path, "e/term").get("step") or 0) >= 2)
    leftover = int((tmp_path / "results" / "e" / "term" / "leftover.pid").read_text())
    assert psutil.pid_exists(leftover)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "CANCELLED" in out, err
    recs = read_journal(tmp_path / "results" / "e" / "term" / "ops" / "journal.jsonl")
    assert recs[-1]["kind"] == "run_end" and recs[-1]["state"] == "CANCELLED"
    assert wait_for(lambda: not marked("e/term"), 10), marked("e/term")


def test_sigkill_then_resume_finishes(tmp_path):
    proc = start(tmp_path, "run", *FIX, "--exp", "e/kill", "--", "steps=40", "step_s=0.2")
    assert wait_for(lambda: (state(tmp_path, "e/kill").get("step") or 0) >= 2)
    proc.kill()
    proc.wait()
    assert marked("e/kill")                      # the trainer outlives its supervisor (own session)
    st = ops(tmp_path, "status", "e/kill")
    assert "NOT RUNNING" in st.stdout and "--resume e/kill" in st.stdout
    p = ops(tmp_path, "run", "--resume", "e/kill")
    assert p.returncode == 0 and "SUCCEEDED" in p.stdout, p.stdout + p.stderr
    recs = read_journal(tmp_path / "results" / "e" / "kill" / "ops" / "journal.jsonl")
    assert any(r["kind"] == "warning" and "resumed" in r["message"] for r in recs)
    starts = [r for r in recs if r["kind"] == "attempt_start"]
    assert len(starts) == 2 and starts[1]["resume_from_step"] >= 2
    assert any(r["kind"] == "cleanup" and any("leftover of this run" in a for a in r["actions"]) for r in recs)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert not marked("e/kill")


def test_leftovers_of_previous_attempt_cleaned_decoys_stay(tmp_path):
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
    decoy_other = subprocess.Popen(sleeper, env={**os.environ, "GRPO_OPS_RUN_ID": "e/left-other"},
                                   start_new_session=True)
    decoy_plain = subprocess.Popen(sleeper, start_new_session=True)
    try:
        p = ops(tmp_path, "run", *FIX, "--exp", "e/left", "--", "leftover=1", "crash_at=2")
        assert p.returncode == 0, p.stderr
        leftover = int((tmp_path / "results" / "e" / "left" / "leftover.pid").read_text())
        recs = read_journal(tmp_path / "results" / "e" / "left" / "ops" / "journal.jsonl")
        cleanups = [a for r in recs if r["kind"] == "cleanup" for a in r["actions"]]
        assert any(f"SIGTERM pid {leftover}" in a for a in cleanups)
        assert not psutil.pid_exists(leftover) or psutil.Process(leftover).status() == psutil.STATUS_ZOMBIE
        assert decoy_other.poll() is None and decoy_plain.poll() is None
    finally:
        for d in (decoy_other, decoy_plain):
            d.kill()
            d.wait()


def test_lock_and_detach(tmp_path):
    p = ops(tmp_path, "run", *FIX, "--exp", "e/det", "--detach", "--", "steps=30", "step_s=0.2")
    assert p.returncode == 0 and "detached" in p.stdout
    assert wait_for(lambda: state(tmp_path, "e/det").get("state") == "RUNNING")
    pid = state(tmp_path, "e/det")["supervisor_pid"]
    assert os.getsid(pid) == pid                      # its own session: the terminal closing cannot reach it
    second = ops(tmp_path, "run", *FIX, "--resume", "e/det")
    assert second.returncode == 2 and f"already supervised by pid {pid}" in second.stderr
    assert second.stderr.count("\n") == 1
    assert wait_for(lambda: state(tmp_path, "e/det").get("state") == "SUCCEEDED", 90)
    f = ops(tmp_path, "logs", "-f", "e/det")
    assert "Step 30/30" in f.stdout


@pytest.mark.parametrize("args,needle", [
    (["run", "--trainer", "fixture", "--exp", "../escape"], "escape"),
    (["run", "--trainer", "fixture", "--exp", "/abs"], "not allowed"),
    (["run", "--trainer", "fixture", "--deadline", "7pm"], "HH:MM"),
    (["run", "--trainer", "nope"], "valid trainers"),
    (["run", "--trainer", "fixture", "--max-attempts", "0"], "max-attempts"),
    (["run", "--trainer", "fixture", "--config", "missing.yaml"], "missing.yaml"),
    (["run", "--trainer", "fixture", "--memory-limit-mib", "1"], "memory-limit-mib"),
    (["run", "--trainer", "fixture", "--resume", "nope/none"], "no experiment"),
    (["status", "nope/none"], "no experiment"),
    (["diagnose", "missing.log"], "not found"),
])
def test_bad_input_one_line_exit_2(tmp_path, args, needle):
    (tmp_path / "results").mkdir()
    p = ops(tmp_path, *args)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0


def test_dry_run_starts_nothing_and_redacts(tmp_path):
    p = ops(tmp_path, "run", "--trainer", "fixture", "--dry-run", "--", "micro_batch=4")
    assert p.returncode == 0, p.stderr
    assert "supervisor_fixture_trainer.py" in p.stdout and "micro_batch=4" in p.stdout
    assert "remedy ladder" in p.stdout and "micro_batch" in p.stdout
    assert "hf_xxxx" not in p.stdout
    assert not (tmp_path / "results").exists()
