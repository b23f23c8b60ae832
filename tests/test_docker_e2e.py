"""End to end with the real Docker engine and the project's image (built offline on the local base image):
- `ops run --docker IMAGE --memory-limit-mib M`: the embedded workload's first plan is OOM-killed in its
  container, the backend reads State.OOMKilled, the supervisor relaunches a smaller plan, the run finishes,
  and a container the backend did not start (even one named after the run) is never touched;
- a container whose supervised workload hangs turns `unhealthy` through its HEALTHCHECK (`ops health`);
- the backend's pids() are host PIDs py-spy can dump (the supervisor's stacks before a hang kill).
"""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from docker_support import TEST_LABEL, busybox_image, project_image, remove_labeled, require_engine
from ops.journal import read_journal

REPO = Path(__file__).resolve().parent.parent
# The first test may build the image (the base image too, ~4 min, when .ci/build-base-image has not run).
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def image():
    require_engine()
    return project_image()


@pytest.fixture
def client():
    return require_engine()


def kind(recs, k):
    return [r for r in recs if r["kind"] == k]


def test_run_in_docker_oom_killed_then_smaller_plan_finishes(tmp_path, image, client):
    exp = f"dockeroom_{uuid.uuid4().hex[:6]}"       # unique: markers of same-named runs elsewhere must not meet
    foreign = [client.containers.run(busybox_image(), ["sleep", "600"], detach=True, network_mode="none",
                                     labels={TEST_LABEL: exp, **extra})
               for extra in ({}, {"grpo-ops.run": exp})]
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRPO_OPS_ENABLE_FAULTS": "1", "GRPO_OPS_DOCKER_NETWORK": "none"}
    try:
        p = subprocess.run([sys.executable, "-m", "ops.cli", "run", "--docker", image, "--memory-limit-mib", "700",
                            "--skip-preflight", "--grace-s", "3", "--startup-timeout-s", "300", "--exp", exp, "--",
                            "++grpo.max_num_steps=2", "++grpo.val_at_start=false", "++fault.alloc_mib=30"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stdout + p.stderr[-3000:]
        recs = read_journal(tmp_path / "results" / exp / "ops" / "journal.jsonl")
        ends = kind(recs, "attempt_end")
        oom = [e for e in ends if e["exit"]["oom_killed"]]
        assert oom and oom[0]["failure"]["kind"] == "host_oom" and "OOMKilled" in oom[0]["exit"]["detail"]
        dec = next(d for d in kind(recs, "decision") if d["action"] == "relaunch" and d["remedy"] == "micro_batch")
        assert dec["plan_diff"]["policy.train_micro_batch_size"][0] == 16 and not dec["experiment_changed"]
        starts = kind(recs, "attempt_start")
        assert all(s["handle"]["backend"] == "docker" and s["handle"]["image"] == image for s in starts)
        assert kind(recs, "run_end")[0]["state"] == "SUCCEEDED" and ends[-1]["exit"]["code"] == 0
        out = (tmp_path / "results" / exp / "output.log").read_text()
        assert "### grpo-ops attempt 2 " in out and "Step 2/2" in out        # container output streamed in
        # its own containers are gone; the others still run
        assert client.containers.list(all=True, filters={"label": "grpo-ops.backend=docker",
                                                         "name": f"grpo-ops-{exp}"}) == []
        assert [c.reload() or c.status for c in foreign] == ["running", "running"]
    finally:
        remove_labeled(client, TEST_LABEL, exp)


def health_of(client, cid):
    return client.api.inspect_container(cid)["State"].get("Health") or {}


def test_hung_workload_turns_the_container_unhealthy(image, client):
    tag = uuid.uuid4().hex[:8]
    cmd = ["docker", "run", "-d", "--network", "none", "--label", f"{TEST_LABEL}={tag}",
           "-e", "GRPO_OPS_ENABLE_FAULTS=1", "--health-cmd", "ops health --max-step-age-s 4",
           "--health-interval", "1s", "--health-retries", "2", "--health-timeout", "20s",
           image, "run", "--skip-preflight", "--hang-floor-s", "900", "--exp", "hang", "--",
           "++grpo.max_num_steps=5", "++grpo.val_at_start=false", "++fault.hang_at_step=2"]
    cid = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    seen = []
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            status = health_of(client, cid).get("Status")
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "unhealthy":
                break
            assert client.api.inspect_container(cid)["State"]["Running"], seen
            time.sleep(0.5)
        assert seen[-1] == "unhealthy" and "healthy" in seen, seen
        last = health_of(client, cid)["Log"][-1]
        assert last["ExitCode"] == 1 and last["Output"].startswith("hung: hang: no new step"), last
        probe = subprocess.run(["docker", "exec", cid, "ops", "health", "--json"], capture_output=True, text=True,
                               timeout=60)
        verdict = json.loads(probe.stdout)
        assert probe.returncode == 0 and verdict["status"] == "healthy" and verdict["step"] == 1  # default limits
    finally:
        remove_labeled(client, TEST_LABEL, tag)


def test_stack_dump_of_a_python_process_in_the_container(tmp_path, image, client):
    from ops.backends.docker import DockerBackend
    from ops.stacks import dump_stacks
    from training.spec import Launch
    rid = f"dockerstacks_{uuid.uuid4().hex[:6]}"
    b = DockerBackend(image, network="none", gpus="none")
    log = tmp_path / "output.log"
    script = "import time\ndef waiting_in_the_container():\n    print('ready', flush=True); time.sleep(300)\n" \
             "waiting_in_the_container()\n"
    h = b.spawn(Launch((sys.executable, "-c", script), {"GRPO_OPS_RUN_ID": rid}, tmp_path,
                       {"exp": rid, "attempt": "1"}), log)
    try:
        deadline = time.monotonic() + 120
        while "ready" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.1)
        dumps = dump_stacks(h.pids(), tmp_path / "stacks", 1)
        assert any("waiting_in_the_container" in d.read_text() for d in dumps), [d.read_text() for d in dumps]
    finally:
        h.terminate(2.0)
        b.cleanup(rid)
