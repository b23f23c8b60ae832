"""The local backend with real child processes, signals and a real cgroup v1 memory limit."""

import os
import subprocess
import sys
import time

import psutil

from ops.backends.base import wait_exit as backend_wait_exit
from ops.backends.local import LocalBackend
from cgroup_support import needs_memory_cgroup
from training.spec import Launch

PY = sys.executable


def launch(code, tmp_path, run_id="t-run", attempt=1, extra_env=None):
    env = {**os.environ, "GRPO_OPS_RUN_ID": run_id, "GRPO_OPS_ATTEMPT": str(attempt), **(extra_env or {})}
    return Launch((PY, "-c", code), env, tmp_path, {"exp": run_id, "attempt": str(attempt)})


def wait_exit(handle, timeout=30):
    ex = backend_wait_exit(handle, timeout)
    assert ex is not None, "child did not exit"
    return ex


def wait_for(pred, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_exit_code_and_output_appended(tmp_path):
    log = tmp_path / "output.log"
    log.write_text("### earlier attempt ###\n")
    h = LocalBackend().spawn(launch("import sys; print('hello'); sys.stderr.write('err\\n'); sys.exit(3)", tmp_path), log)
    ex = wait_exit(h)
    assert ex.code == 3 and ex.signal is None and ex.oom_killed is None
    text = log.read_text()
    assert text.startswith("### earlier attempt ###\n") and "hello" in text and "err" in text
    assert h.describe()["pid"] == h.pid


def test_own_session_and_signal_exit(tmp_path):
    h = LocalBackend().spawn(launch("import time; time.sleep(60)", tmp_path), tmp_path / "o.log")
    assert os.getsid(h.pid) == h.pid and os.getpgid(h.pid) == h.pid
    ex = h.terminate(grace_s=2.0)
    assert ex.signal == 15 and ex.code is None


def test_terminate_kills_whole_tree_including_escaped_child(tmp_path):
    code = (
        "import subprocess, sys, time, os\n"
        "a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "b = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        "print(a.pid, b.pid, flush=True)\n"
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"   # stubborn parent: needs SIGKILL
        "time.sleep(120)\n")
    log = tmp_path / "o.log"
    h = LocalBackend().spawn(launch(code, tmp_path), log)
    assert wait_for(lambda: len(log.read_text().split()) == 2)
    kids = [int(x) for x in log.read_text().split()]
    assert wait_for(lambda: set(kids) <= set(h.pids()))
    ex = h.terminate(grace_s=1.0)
    assert ex.signal == 9
    assert wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in kids))


def test_memory_sample_counts_tree(tmp_path):
    h = LocalBackend().spawn(launch("b = bytearray(80 << 20); import time; time.sleep(60)", tmp_path),
                             tmp_path / "o.log")
    try:
        assert wait_for(lambda: h.memory().rss_mib > 60)
    finally:
        h.terminate(grace_s=2.0)


@needs_memory_cgroup
def test_memory_limit_kills_and_counts_oom(tmp_path):
    run_id = f"t-cg-{os.getpid()}"
    h = LocalBackend(memory_limit_mib=64).spawn(
        launch("import time; b = bytearray(400 << 20); time.sleep(30)", tmp_path, run_id=run_id), tmp_path / "o.log")
    cg_path = h.cgroup.path
    assert "grpo-ops" in str(cg_path)
    ex = wait_exit(h)
    assert ex.signal == 9 and ex.oom_killed is True and "oom_kill" in ex.detail
    h.terminate(grace_s=1.0)
    assert not cg_path.exists()


def test_cleanup_kills_only_own_marker(tmp_path):
    sleeper = [PY, "-c", "import time; time.sleep(120)"]
    mine = {"GRPO_OPS_RUN_ID": "mine", "GRPO_OPS_RUN_DIR": str(tmp_path / "a")}
    own = subprocess.Popen(sleeper, env={**os.environ, **mine, "GRPO_OPS_ATTEMPT": "1"}, start_new_session=True)
    other = subprocess.Popen(sleeper, env={**os.environ, "GRPO_OPS_RUN_ID": "mine-2"}, start_new_session=True)
    twin = subprocess.Popen(sleeper, env={**os.environ, **mine, "GRPO_OPS_RUN_DIR": str(tmp_path / "b")},
                            start_new_session=True)                      # same name, other results tree
    plain = subprocess.Popen(sleeper, start_new_session=True)
    backend = LocalBackend(run_dir=tmp_path / "a")
    try:
        dry = backend.cleanup("mine", dry_run=True)
        assert any(str(own.pid) in ln for ln in dry) and own.poll() is None
        lines = backend.cleanup("mine")
        assert any(f"SIGTERM pid {own.pid}" in ln for ln in lines)
        assert own.wait(timeout=10) is not None
        assert other.poll() is None and plain.poll() is None and twin.poll() is None
        assert not any(str(other.pid) in ln or str(plain.pid) in ln for ln in lines)
        assert any(str(twin.pid) in ln and "not ours" in ln for ln in lines)
    finally:
        for p in (own, other, twin, plain):
            if p.poll() is None:
                p.kill()
            p.wait()
