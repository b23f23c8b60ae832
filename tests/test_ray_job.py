"""RayJobBackend against a real two-node Ray cluster on loopback (tests/ray_nodes.py): simple Python
entrypoints as jobs; exit mapping, log streaming, environment without secrets in the entrypoint, stop,
clean-up that never touches another run's job, a driver pinned to the second node."""

import os
import sys
import time
from pathlib import Path

import pytest

from ops.backends.base import wait_exit as backend_wait_exit
from ops.backends.ray_job import META_RUN, RayJobBackend
from training.spec import Launch

pytestmark = pytest.mark.ray

SECRET = "hf_" + "Q" * 30


def launch_of(code: str, tmp_path: Path, run_id: str, attempt: int = 1, **env) -> Launch:
    full = {"PATH": os.environ["PATH"], "GRPO_OPS_RUN_ID": run_id, "GRPO_OPS_ATTEMPT": str(attempt), **env}
    return Launch((sys.executable, "-c", code), full, tmp_path, {"exp": run_id, "attempt": str(attempt)})


def wait_exit(handle, timeout=120.0):
    found = backend_wait_exit(handle, timeout, poll_s=0.2)
    assert found is not None, f"job {handle.sid} did not end: {handle.status}"
    return found


def wait_for(pred, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def backend(ray_two_nodes):
    return RayJobBackend(ray_two_nodes.address, stop_wait_s=3, poll_s=0.2)


def test_job_runs_to_completion_with_env_cwd_and_streamed_log(backend, tmp_path):
    log_path = tmp_path / "output.log"
    log_path.write_text("### grpo-ops attempt 1 ###\n")
    code = ("import os; print('cwd', os.getcwd()); print('secret ok', len(os.environ['HF_TOKEN']), os.environ['HF_TOKEN'][:5]); "
            "print('marker', os.environ['GRPO_OPS_RUN_ID'], os.environ['GRPO_OPS_ATTEMPT'])")
    h = backend.spawn(launch_of(code, tmp_path, "ok/run", HF_TOKEN=SECRET), log_path)
    assert h.sid.startswith("grpo-ops-ok_run-a1-")
    assert wait_exit(h).code == 0
    text = log_path.read_text()
    assert text.startswith("### grpo-ops attempt 1 ###\n")           # appended, not overwritten
    assert f"cwd {tmp_path}" in text and "secret ok 33 hf_QQ" in text and "marker ok/run 1" in text
    assert SECRET not in text
    info = backend.client.get_job_info(h.sid)
    assert SECRET not in info.entrypoint and info.metadata[META_RUN] == "ok/run"
    assert h.describe()["job_id"] == h.sid and h.describe()["driver_node_id"]
    assert h.terminate(1.0).code == 0                                   # already ended: just its Exit


def test_exit_code_and_signal_reach_the_exit(backend, tmp_path):
    failed = backend.spawn(launch_of("import sys; print('bye', flush=True); sys.exit(3)", tmp_path, "codes"),
                           tmp_path / "a.log")
    killed = backend.spawn(launch_of("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", tmp_path,
                                     "codes", 2), tmp_path / "b.log")
    e1, e2 = wait_exit(failed), wait_exit(killed)
    assert (e1.code, e1.signal) == (3, None) and "exit code 3" in e1.detail
    assert (e2.code, e2.signal) == (None, 9)
    assert "bye" in (tmp_path / "a.log").read_text()


def test_terminate_stops_the_job_with_sigterm_first(backend, tmp_path):
    code = ("import signal, sys, time\n"
            "def bye(*_):\n    print('got SIGTERM', flush=True); sys.exit(143)\n"
            "signal.signal(signal.SIGTERM, bye)\nprint('running', flush=True)\ntime.sleep(600)\n")
    log_path = tmp_path / "t.log"
    h = backend.spawn(launch_of(code, tmp_path, "stop-me"), log_path)
    assert wait_for(lambda: "running" in log_path.read_text() if log_path.exists() else False)
    assert h.poll() is None
    pids = h.pids()                                        # the trainer runs on this host: found by marker
    assert pids and h.memory().rss_mib > 1
    t0 = time.monotonic()
    e = h.terminate(grace_s=3)
    assert e.signal == 15 and "STOPPED" in e.detail, e
    assert time.monotonic() - t0 < 60
    assert "got SIGTERM" in log_path.read_text()
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 20)


def test_cleanup_stops_only_this_runs_jobs(backend, ray_two_nodes, tmp_path):
    sleeper = "import time; print('up', flush=True); time.sleep(600)"
    mine = [backend.spawn(launch_of(sleeper, tmp_path, "clean/me", n), tmp_path / f"m{n}.log") for n in (1, 2)]
    other_run = backend.spawn(launch_of(sleeper, tmp_path, "clean/me-too"), tmp_path / "o.log")
    foreign = backend.client.submit_job(entrypoint=f"{sys.executable} -c 'import time; time.sleep(600)'",
                                        submission_id=f"grpo-ops-clean_me-a9-foreign{os.getpid()}")
    try:
        assert wait_for(lambda: all(h.status == "RUNNING" for h in [*mine, other_run]))
        assert all("would stop" in l for l in backend.cleanup("clean/me", dry_run=True) if "clean_me-a" in l
                   and "foreign" not in l)
        assert backend.client.get_job_status(mine[0].sid).value == "RUNNING"
        lines = backend.cleanup("clean/me")
        assert sum(l.startswith("stopped ray job grpo-ops-clean_me-a") and "now STOPPED" in l for l in lines) == 2, lines
        assert any(foreign in l and l.startswith("left alone") for l in lines), lines
        assert any(other_run.sid in l and "owner clean/me-too" in l for l in lines), lines
        assert all(wait_exit(h).signal == 15 for h in mine)
        time.sleep(1.0)
        assert backend.client.get_job_status(foreign).value == "RUNNING"
        assert other_run.poll() is None
    finally:
        other_run.terminate(1.0)
        backend.client.stop_job(foreign)


def test_driver_pinned_to_the_second_node_streams_its_log(ray_two_nodes, tmp_path):
    node = ray_two_nodes.nodes[1].resource
    pinned = RayJobBackend(ray_two_nodes.address, poll_s=0.2, entrypoint_resources={node: 1})
    h = pinned.spawn(launch_of("print('hello from the pinned driver')", tmp_path, "pinned"), tmp_path / "p.log")
    assert wait_exit(h, timeout=180).code == 0
    assert "hello from the pinned driver" in (tmp_path / "p.log").read_text()
    assert node in node_resources(ray_two_nodes)[h.driver_node_id]      # the driver ran on the second node


def node_resources(cluster) -> dict:
    import json
    import subprocess
    out = subprocess.run(
        [sys.executable, "-c", "import ray, json, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
         "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))",
         cluster.gcs_address], env=cluster.env(), capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_jobs_ray_workers_on_another_node_carry_the_run_marker(backend, ray_two_nodes, tmp_path):
    """Like NeMo RL's driver (ray.init(address="auto") inside the job), a trainer attaches to the cluster; its
    tasks on the second node get the run's environment from the job's runtime_env."""
    node = ray_two_nodes.nodes[1].resource
    code = ("import os, ray; ray.init(address='auto', logging_level='ERROR')\n"
            f"@ray.remote(num_cpus=0, resources={{{node!r}: 0.01}})\n"
            "def where():\n    return os.environ.get('GRPO_OPS_RUN_ID'), ray.get_runtime_context().get_node_id()\n"
            "print('worker', *ray.get(where.remote()), flush=True)\n")
    log_path = tmp_path / "w.log"
    h = backend.spawn(launch_of(code, tmp_path, "multi/node"), log_path)
    assert wait_exit(h, timeout=180).code == 0, log_path.read_text()[-2000:]
    [line] = [l for l in log_path.read_text().splitlines() if l.startswith("worker ")]
    _, run_id, node_id = line.split()
    assert run_id == "multi/node" and node in node_resources(ray_two_nodes)[node_id]


@pytest.mark.slow
def test_a_lost_head_ends_the_attempt_instead_of_hanging(tmp_path):
    """The whole cluster dies under a running job: poll() reports the loss after lost_after_s, never hangs."""
    from ray_nodes import start_cluster, stop_cluster
    cluster = start_cluster(extra_nodes=0, num_cpus=1)
    try:
        backend = RayJobBackend(cluster.address, poll_s=0.2, lost_after_s=3.0, drain_s=3.0)
        log_path = tmp_path / "lost.log"
        h = backend.spawn(launch_of("import time; print('up', flush=True); time.sleep(600)", tmp_path, "lost"),
                          log_path)
        assert wait_for(lambda: log_path.exists() and "up" in log_path.read_text())
    finally:
        stop_cluster(cluster)
    e = wait_exit(h, timeout=60)
    assert e.code is None and "lost the Ray Jobs API" in e.detail
    assert h.terminate(1.0) == e                       # stop_job fails quietly; the Exit stands
