"""DockerBackend against the real Docker engine, with simple commands in a busybox image imported from the
host: exit codes and logs, the container's flags and labels, secrets off every command line, OOMKilled under
--memory, stop + remove, and cleanup that never touches a container the backend did not start."""

import os
import time
import uuid
from pathlib import Path

import pytest

from docker_support import TEST_LABEL, busybox_image, remove_labeled, require_engine
from ops.backends.base import wait_exit as backend_wait_exit
from ops.errors import UserError
from training.spec import Launch

pytestmark = pytest.mark.docker   # (the no-engine CLI test needs none)


@pytest.fixture
def client():
    return require_engine()


@pytest.fixture
def run_id(client):
    rid = f"test-docker/{uuid.uuid4().hex[:8]}"
    yield rid
    remove_labeled(client, "grpo-ops.run", rid)


def backend(**kw):
    from ops.backends.docker import DockerBackend
    return DockerBackend(busybox_image(), network="none", gpus="none", **kw)


def launch(tmp_path, run_id, script, attempt=1, **env):
    return Launch(("/bin/sh", "-c", script),
                  {**os.environ, "GRPO_OPS_RUN_ID": run_id, "GRPO_OPS_ATTEMPT": str(attempt), **env},
                  tmp_path, {"exp": run_id, "attempt": str(attempt)})


def wait_exit(h, timeout_s=120):
    e = backend_wait_exit(h, timeout_s)
    assert e is not None, "container did not exit"
    return e


def test_runs_streams_logs_reads_exit_and_sets_training_flags(tmp_path, client, run_id):
    b = backend(keep_containers=True, hf_cache=tmp_path)
    log = tmp_path / "output.log"
    log.write_text("### grpo-ops attempt 1 ###\n")
    secret = "wandb-" + uuid.uuid4().hex
    script = 'echo "to stdout"; echo "to stderr" >&2; echo "run=$GRPO_OPS_RUN_ID key=${WANDB_API_KEY:+set} ' \
             'path=$PATH"; echo "stack=$(ulimit -s)"; exit 3'
    h = b.spawn(launch(tmp_path, run_id, script, WANDB_API_KEY=secret), log)
    e = wait_exit(h)
    assert (e.code, e.signal, e.oom_killed) == (3, None, False)
    out = log.read_text()
    assert out.startswith("### grpo-ops attempt 1 ###\n")          # appended after the supervisor's mark
    assert "to stdout" in out and "to stderr" in out and f"run={run_id} key=set path=/bin" in out
    assert "stack=65536" in out                                       # 64 MiB stack ulimit
    c = client.containers.get(h.id)
    hc = c.attrs["HostConfig"]
    assert hc["IpcMode"] == "host" and hc["Init"] is True and hc["NetworkMode"] == "none"
    assert {"Name": "stack", "Soft": 64 << 20, "Hard": 64 << 20} in hc["Ulimits"]
    assert c.labels["grpo-ops.run"] == run_id and c.labels["grpo-ops.attempt"] == "1"
    assert str(tmp_path) in [m["Destination"] for m in c.attrs["Mounts"]]
    # the secret reaches the trainer's environment only: never argv, never the journal's handle
    assert secret not in " ".join([c.attrs["Path"], *c.attrs["Args"]]) and secret not in str(h.describe())
    assert not any(v.startswith(("PATH=/", "HOME=/root")) and "venv" in v for v in c.attrs["Config"]["Env"])
    assert h.describe()["container"] == h.id[:12] and h.pids() == []
    h.terminate(1.0)
    assert client.containers.get(h.id).status == "exited"             # kept: keep_containers=True


def test_memory_limit_oom_killed_is_read_from_the_engine(tmp_path, client, run_id):
    b = backend(memory_limit_mib=64)
    log = tmp_path / "output.log"
    h = b.spawn(launch(tmp_path, run_id, "sleep 1; echo allocating; dd if=/dev/zero of=/dev/null bs=300M count=1; "
                                         "exit $?"), log)
    mem = h.memory()
    assert mem is not None and mem.cgroup_limit_mib == 64 and h.pids()
    e = wait_exit(h)
    assert e.oom_killed is True and e.signal == 9 and e.code is None and "OOMKilled" in e.detail
    assert "allocating" in log.read_text()
    h.terminate(1.0)
    with pytest.raises(Exception, match="No such container|404"):
        client.containers.get(h.id)                                   # removed after its exit was read


def test_terminate_sends_sigterm_then_removes(tmp_path, client, run_id):
    b = backend()
    log = tmp_path / "output.log"
    h = b.spawn(launch(tmp_path, run_id, 'trap "echo got TERM; exit 0" TERM; echo ready; '
                                         'while true; do sleep 0.1; done'), log)
    deadline = time.monotonic() + 60
    while "ready" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.poll() is None
    e = h.terminate(10.0)
    assert e.code == 0 and "got TERM" in log.read_text()
    assert client.containers.list(all=True, filters={"label": f"grpo-ops.run={run_id}"}) == []


def test_cleanup_touches_only_its_own_containers(tmp_path, client, run_id):
    image = busybox_image()
    tag = {TEST_LABEL: run_id}
    foreign = [client.containers.run(image, ["sleep", "300"], detach=True, network_mode="none", labels=lab)
               for lab in (tag,                                                   # nobody's
                           {**tag, "grpo-ops.run": "another/run", "grpo-ops.backend": "docker"},   # another run's
                           {**tag, "grpo-ops.run": run_id})]                      # this run's name, not ours
    try:
        b = backend()
        own = b.spawn(launch(tmp_path, run_id, "sleep 300"), tmp_path / "output.log")
        dry = b.cleanup(run_id, dry_run=True)
        assert dry == [f"would stop and remove container {own.name} ({own.id[:12]}, running, attempt 1)"]
        assert client.containers.get(own.id).status == "running"
        done = b.cleanup(run_id)
        assert done == [f"stopped and removed container {own.name} ({own.id[:12]}, running, attempt 1)"]
        assert [c.reload() or c.status for c in foreign] == ["running"] * 3
        assert wait_exit(own).signal in (9, 15)                       # read even though it was removed
    finally:
        remove_labeled(client, TEST_LABEL, run_id)


def test_cleanup_with_a_run_dir_leaves_the_same_name_in_another_results_tree(tmp_path, client, run_id):
    """Experiment names repeat across results trees: cleanup of one tree's run never stops the other's."""
    mine, theirs = tmp_path / "a", tmp_path / "b"
    b_mine, b_theirs = backend(run_dir=mine), backend(run_dir=theirs)
    try:
        own = b_mine.spawn(launch(tmp_path, run_id, "sleep 300", GRPO_OPS_RUN_DIR=str(mine)), tmp_path / "o1.log")
        other = b_theirs.spawn(launch(tmp_path, run_id, "sleep 300", GRPO_OPS_RUN_DIR=str(theirs)),
                               tmp_path / "o2.log")
        done = b_mine.cleanup(run_id)
        assert done == [f"stopped and removed container {own.name} ({own.id[:12]}, running, attempt 1)"]
        assert client.containers.get(other.id).status == "running"
    finally:
        remove_labeled(client, "grpo-ops.run", run_id)


def test_bad_start_and_missing_image_are_one_line_user_errors(tmp_path, client, run_id):
    from ops.backends.docker import DockerBackend
    with pytest.raises(UserError, match="docker image 'grpo-ops-test/absent:none' not found; build it"):
        DockerBackend("grpo-ops-test/absent:none", network="none")
    with pytest.raises(UserError, match="--docker: memory_limit_mib 4 is too small"):
        DockerBackend(busybox_image(), memory_limit_mib=4)
    # a missing program is the trainer's failure (exit 127 and the init's words in output.log), not ours
    b = backend()
    h = b.spawn(Launch(("/no/such/binary",), {"GRPO_OPS_RUN_ID": run_id}, tmp_path, {"exp": run_id}),
                tmp_path / "output.log")
    assert wait_exit(h).code == 127 and "/no/such/binary" in (tmp_path / "output.log").read_text()
    h.terminate(1.0)
    assert client.containers.list(all=True, filters={"label": f"grpo-ops.run={run_id}"}) == []


def ops_run(tmp_path, *args, **env):
    import subprocess
    import sys
    repo = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "ops.cli", "run", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(repo), **env})


def test_ops_run_docker_without_engine_is_one_line(tmp_path):
    p = ops_run(tmp_path, "--docker", "any:image", DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert p.stderr.startswith("ops: error: no Docker engine answers at unix:///nonexistent/docker.sock")


def test_ops_run_docker_missing_image_is_one_line(tmp_path, client):
    p = ops_run(tmp_path, "--docker", "grpo-ops-test/absent:none")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "docker image 'grpo-ops-test/absent:none' not found" in p.stderr
