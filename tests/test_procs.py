"""ops.procs: the classifier over full command lines (table-driven) and real process control."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from ops import procs

PY = sys.executable


@pytest.mark.parametrize("cmdline, kind", [
    # Ray pads process titles: with spaces (one argv word) or NULs (trailing empty words).
    (["ray::VllmAsyncGenerationWorker" + " " * 40], procs.VLLM_WORKER),
    (["ray::VllmAsyncGenerationWorker", "", "", ""], procs.VLLM_WORKER),
    (["ray::VllmAsyncGenerationWorker.generate_async"], procs.VLLM_WORKER),
    (["ray::VllmGenerationWorker.generate"], procs.VLLM_WORKER),
    (["ray::RayWorkerWrapper.execute_method"], procs.VLLM_WORKER),
    (["ray::IDLE"], procs.RAY_WORKER),
    (["ray::MegatronPolicyWorker.train"], procs.RAY_WORKER),
    (["ray::DashboardAgent"], procs.RAY_DAEMON),
    (["ray::RuntimeEnvAgent"], procs.RAY_DAEMON),
    (["/v/site-packages/ray/core/src/ray/raylet/raylet", "--session_dir=/tmp/ray/s"], procs.RAY_DAEMON),
    (["/v/site-packages/ray/core/src/ray/gcs/gcs_server", "--gcs_server_port=0"], procs.RAY_DAEMON),
    (["/v/bin/python3", "/v/site-packages/ray/dashboard/dashboard.py", "--host=127.0.0.1"], procs.RAY_DAEMON),
    (["/v/bin/python3", "-u", "/v/site-packages/ray/_private/log_monitor.py"], procs.RAY_DAEMON),
    (["/v/bin/python3", "-m", "ray.util.client.server", "--port=10001"], procs.RAY_DAEMON),
    (["ray-dashboard-JobHead-0 (/v/bin/python3 -B -c from multiprocessing...)"], procs.RAY_DAEMON),
    (["/v/bin/python", "/v/ray/_private/workers/default_worker.py", "--node-ip-address=1"], procs.RAY_WORKER),
    (["/gym/.venv/bin/python", "app.py", "+config_paths=[resources_servers/workplace_assistant/c.yaml]"],
     procs.GYM_SERVER),
    (["python", "/x/3rdparty/Gym-workspace/Gym/nemo_gym/app.py"], procs.GYM_SERVER),
    # Decoys: a name in the arguments is not a process of that kind.
    (["sleep", "600", "VllmAsyncGenerationWorker"], None),
    (["python", "-c", "import time; time.sleep(600)  # vllm ray::VllmAsyncGenerationWorker"], None),
    (["grep", "-f", "ray::VllmAsyncGenerationWorker"], None),
    (["bash", "-c", "pkill -f VllmAsyncGenerationWorker; ray stop --force"], None),
    (["python", "serve_vllm.py"], None),
    (["python", "app.py"], None),          # an app.py with no Gym marker is not a Gym server
    (["vllm", "serve", "model"], None),
    ([], None),
    ("ray::VllmAsyncGenerationWorker   ", procs.VLLM_WORKER),
])
def test_classify(cmdline, kind):
    assert procs.classify(cmdline) == kind


def _spawn(code: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", code], env=env, start_new_session=True)


def _wait_dead(p: subprocess.Popen, timeout: float = 30.0) -> int:
    return p.wait(timeout=timeout)


def test_snapshot_reads_marker_and_full_cmdline():
    env = dict(os.environ, GRPO_OPS_RUN_ID="20261125/embedded/x_001", GRPO_OPS_ATTEMPT="3")
    p = _spawn("import time; time.sleep(60)", env)
    try:
        table = procs.snapshot()
        row = table[p.pid]
        assert row.run_id == "20261125/embedded/x_001"
        assert row.attempt == "3"
        assert row.cmdline == (PY, "-c", "import time; time.sleep(60)")
        assert row.ppid == os.getpid()
        assert row.uid == os.getuid()
        assert row.pgid == p.pid
        assert p.pid in procs.descendants(table, os.getpid())
        assert os.getpid() in procs.ancestors(table, p.pid)
        assert table[os.getpid()].run_id is None or "GRPO_OPS_RUN_ID" in os.environ
    finally:
        p.kill()
        p.wait()


def test_terminate_pids_sigterm_then_sigkill():
    polite = _spawn("import time; time.sleep(120)")
    stubborn = _spawn("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "print('ready', flush=True); time.sleep(120)")
    time.sleep(0.5)  # let the handler be installed (not a speed assumption: only the SIGKILL path needs it)
    lines = procs.terminate_pids([polite.pid, stubborn.pid], grace_s=1.0)
    assert _wait_dead(polite) == -signal.SIGTERM
    assert _wait_dead(stubborn) == -signal.SIGKILL
    assert f"SIGTERM pid {polite.pid}" in lines
    assert any(line.startswith(f"SIGKILL pid {stubborn.pid}") for line in lines)


def test_terminate_pids_gone_and_dry_run():
    gone = _spawn("pass")
    gone.wait()
    alive = _spawn("import time; time.sleep(60)")
    try:
        lines = procs.terminate_pids([gone.pid, alive.pid], grace_s=0.1, dry_run=True)
        assert lines[0] == f"pid {gone.pid} already gone"
        assert lines[1].startswith(f"would SIGTERM pid {alive.pid}")
        time.sleep(0.2)
        assert alive.poll() is None, "dry run must not signal"
    finally:
        alive.kill()
        alive.wait()


def test_terminate_pids_leaves_a_reused_pid_alone():
    p = _spawn("import time; time.sleep(60)")
    try:
        row = procs.snapshot(with_markers=False)[p.pid]
        stale = dataclasses.replace(row, create_time=row.create_time - 100.0)
        lines = procs.terminate_pids([stale], grace_s=0.1)
        assert "reused" in lines[0]
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_terminate_group_kills_the_whole_group():
    leader = subprocess.Popen(
        [PY, "-c", "import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import signal,time; "
         "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)']); time.sleep(120)"],
        start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not psutil.Process(leader.pid).children():
        time.sleep(0.05)
    child = psutil.Process(leader.pid).children()[0]
    time.sleep(0.5)
    lines = procs.terminate_group(leader.pid, grace_s=1.0)
    leader.wait(timeout=30)
    child.wait(timeout=30)
    assert lines[0] == f"SIGTERM process group {leader.pid}"
    assert any("SIGKILL process group" in line for line in lines)
    assert procs.terminate_group(leader.pid, grace_s=0.1) == [f"process group {leader.pid} already gone"]
