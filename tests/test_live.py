"""`ops status --watch`: the live view over real files written by a real (stand-in) supervisor process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from report_fixtures import hang_then_recover
from rich.console import Console

from ops.live import LiveView, collect, render, watch
from training.spec import RunPaths

REPO = Path(__file__).resolve().parents[1]


def text_of(renderable, width=120) -> str:
    c = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
    c.print(renderable)
    return c.file.getvalue()


def test_render_shows_progress_facts_and_events():
    view = LiveView("exp1", {"state": "RUNNING", "attempt": 2, "step": 7, "total_steps": 20, "reward": 0.4321,
                             "eta_s": 130.0, "failures": {"hang": 1}, "phase": "training"}, 1.0, True,
                    ("16:00:16 decision relaunch: hang",))
    out = text_of(render(view))
    assert "step 7/20 (35%)" in out and "ETA 2.2 min" in out
    assert "RUNNING" in out and "attempt 2" in out and "hang x1" in out and "0.4321" in out
    assert "decision relaunch: hang" in out
    assert "━" in out                                   # the bar itself
    assert not view.is_lost and not view.is_terminal


def test_lost_supervisor_is_flagged():
    view = LiveView("exp1", {"state": "RUNNING", "step": 3, "total_steps": 10}, 120.0, False)
    assert view.is_lost
    assert "supervisor not running" in text_of(render(view)) and "ops run --resume exp1" in text_of(render(view))


def test_collect_reads_the_journal_tail(tmp_path):
    root = hang_then_recover(tmp_path / "run")
    paths = RunPaths(root)
    (root / "ops" / "state.json").write_text(json.dumps({"run_id": "r", "state": "SUCCEEDED", "step": 12,
                                                          "total_steps": 12}))
    view = collect(paths, now=time.time())
    assert view.is_terminal and view.heartbeat_age_s is None and not view.supervised
    assert view.events[-1].endswith("run ended SUCCEEDED: all 12 steps done")
    assert any("attempt 1 ended at step 5: hang" in e for e in view.events)


WRITER = textwrap.dedent("""
    import fcntl, json, os, sys, time
    ops = sys.argv[1]; final = sys.argv[2]
    lock = os.open(os.path.join(ops, "supervisor.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    def put(name, obj):
        tmp = os.path.join(ops, "." + name + ".tmp")
        with open(tmp, "w") as f: json.dump(obj, f)
        os.replace(tmp, os.path.join(ops, name))
    j = open(os.path.join(ops, "journal.jsonl"), "a")
    for step in range(1, 6):
        put("state.json", {"run_id": "w", "state": "RUNNING", "attempt": 1, "step": step, "total_steps": 5,
                           "reward": 0.1 * step, "eta_s": 5 - step})
        put("heartbeat.json", {"ts": time.time(), "pid": os.getpid(), "state": "RUNNING", "step": step})
        j.write(json.dumps({"seq": step, "kind": "progress", "attempt": 1, "step": step}) + "\\n"); j.flush()
        time.sleep(0.3)
    j.write(json.dumps({"seq": 9, "kind": "run_end", "ts": "2026-01-01T00:00:09Z", "state": final,
                        "reason": "done"}) + "\\n"); j.flush()
    put("state.json", {"run_id": "w", "state": final, "attempt": 1, "step": 5, "total_steps": 5})
""")


def _watch_writer(tmp_path, final: str) -> tuple[int, str]:
    paths = RunPaths(tmp_path / "run")
    paths.ops_dir.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(paths.ops_dir), final])
    try:
        deadline = time.time() + 60
        while not paths.state_file.exists() and time.time() < deadline:
            time.sleep(0.02)
        buf = io.StringIO()
        rc = watch(paths, interval_s=0.05, console=Console(file=buf, force_terminal=True, width=120), max_s=120)
    finally:
        writer.wait(timeout=60)
    return rc, buf.getvalue()


def test_watch_follows_a_live_run_to_success(tmp_path):
    rc, out = _watch_writer(tmp_path, "SUCCEEDED")
    assert rc == 0
    assert "step 5/5 (100%)" in out and "SUCCEEDED" in out
    assert "step 1/5" in out or "step 2/5" in out          # it refreshed while the run was going


def test_watch_returns_1_when_the_run_failed(tmp_path):
    rc, out = _watch_writer(tmp_path, "FAILED_OOM")
    assert rc == 1 and "FAILED_OOM" in out


def test_ops_status_watch_cli_on_a_finished_run(tmp_path):
    root = hang_then_recover(tmp_path / "results" / "20251124" / "embedded" / "grpo_tiny_001")
    (root / "ops" / "state.json").write_text(json.dumps({"run_id": "x", "state": "SUCCEEDED", "attempt": 2,
                                                          "step": 12, "total_steps": 12}))
    p = subprocess.run([sys.executable, "-m", "ops.cli", "status", "--watch", "--results", str(tmp_path / "results")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env={"PYTHONPATH": str(REPO),
                                                                                       "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert "step 12/12 (100%)" in p.stdout and "SUCCEEDED" in p.stdout
