"""End-to-end: `ops run --ray-address` supervises the embedded GRPO workload (real torch training) submitted
as a Ray job to a real two-node cluster: it runs to completion; an injected hang is detected, the job
stopped, relaunched, and it finishes; a job this run did not submit is never stopped."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.journal import read_journal

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hf_" + "Z" * 30
FAST = ["--skip-preflight", "--grace-s", "3", "--startup-timeout-s", "300"]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def ops(tmp_path, *args, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPO_OPS_ENABLE_FAULTS": "1", "HF_TOKEN": SECRET}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def kind(recs, k):
    return [r for r in recs if r["kind"] == k]


def jobs_of(client, exp):
    return sorted((j for j in client.list_jobs() if (j.metadata or {}).get("grpo_ops_run_id") == exp),
                  key=lambda j: j.start_time or 0)


def test_embedded_workload_runs_to_completion_as_a_ray_job(ray_two_nodes, tmp_path):
    from ray.job_submission import JobSubmissionClient
    p = ops(tmp_path, "run", "--ray-address", ray_two_nodes.address, *FAST, "--exp", "ray/ok", "--",
            "++grpo.max_num_steps=3", "++grpo.val_at_start=false")
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert "ray/ok: SUCCEEDED after 1 attempt(s), step 3/3" in p.stdout
    recs = read_journal(tmp_path / "results" / "ray" / "ok" / "ops" / "journal.jsonl")
    handle = kind(recs, "attempt_start")[0]["handle"]
    assert handle["backend"] == "ray_job" and handle["job_id"].startswith("grpo-ops-ray_ok-a1-")
    assert [r["step"] for r in kind(recs, "progress")] == [1, 2, 3]
    log = (tmp_path / "results" / "ray" / "ok" / "output.log").read_text()
    assert "### grpo-ops attempt 1" in log and "Step 3/3" in log and SECRET not in log
    client = JobSubmissionClient(ray_two_nodes.address)
    [job] = jobs_of(client, "ray/ok")
    assert job.status.value == "SUCCEEDED" and SECRET not in job.entrypoint
    assert job.metadata["grpo_ops_attempt"] == "1"
    assert job.entrypoint.startswith(f"cd {tmp_path / 'results' / 'ray' / 'ok'} && exec ")


def test_hang_is_stopped_and_relaunched_and_other_jobs_survive(ray_two_nodes, tmp_path):
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(ray_two_nodes.address)
    foreign = client.submit_job(entrypoint=f"{sys.executable} -c 'import time; time.sleep(900)'",
                                submission_id=f"someone-elses-job-{os.getpid()}")
    try:
        p = ops(tmp_path, "run", "--ray-address", ray_two_nodes.address, *FAST, "--exp", "ray/hang",
                "--hang-floor-s", "8", "--hang-factor", "2", "--",
                "++grpo.max_num_steps=4", "++grpo.val_at_start=false", "++fault.hang_at_step=3")
        assert p.returncode == 0, p.stdout + p.stderr[-3000:]
        recs = read_journal(tmp_path / "results" / "ray" / "hang" / "ops" / "journal.jsonl")
        first, second = kind(recs, "attempt_end")
        assert first["failure"]["kind"] == "hang" and first["exit"]["signal"] == 15
        assert first["stack_dumps"]                       # the trainer runs on this host: py-spy found it
        assert kind(recs, "decision")[0]["action"] == "relaunch"
        assert second["failure"] is None and kind(recs, "run_end")[0]["state"] == "SUCCEEDED"
        jobs = jobs_of(client, "ray/hang")
        assert [j.status.value for j in jobs] == ["STOPPED", "SUCCEEDED"]
        assert [j.metadata["grpo_ops_attempt"] for j in jobs] == ["1", "2"]
        cleanups = [line for r in kind(recs, "cleanup") for line in r["actions"]]
        assert any(foreign in line and line.startswith("left alone") for line in cleanups), cleanups
        assert client.get_job_status(foreign).value == "RUNNING"
    finally:
        client.stop_job(foreign)


def test_stopping_the_supervisor_stops_its_job(ray_two_nodes, tmp_path):
    import signal
    from ray.job_submission import JobSubmissionClient
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPO_OPS_ENABLE_FAULTS": "1"}
    env.pop("RAY_ADDRESS", None)
    sup = subprocess.Popen([sys.executable, "-m", "ops.cli", "run", "--ray-address", ray_two_nodes.address, *FAST,
                            "--exp", "ray/cancel", "--", "++grpo.max_num_steps=500", "++grpo.val_at_start=false",
                            "++fault.slow_step_s=1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    state = tmp_path / "results" / "ray" / "cancel" / "ops" / "state.json"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if (json.loads(state.read_text()).get("step") or 0) >= 1:
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("the run never reached step 1")
        sup.send_signal(signal.SIGTERM)
        out, err = sup.communicate(timeout=120)
    finally:
        if sup.poll() is None:
            sup.kill()
    assert sup.returncode == 1, out + err[-2000:]
    assert json.loads(state.read_text())["state"] == "CANCELLED"
    [job] = jobs_of(JobSubmissionClient(ray_two_nodes.address), "ray/cancel")
    assert job.status.value == "STOPPED"


def test_ops_clean_stops_an_orphaned_job_of_a_dead_supervisor_only(ray_two_nodes, tmp_path):
    import signal
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(ray_two_nodes.address)
    foreign = client.submit_job(entrypoint=f"{sys.executable} -c 'import time; time.sleep(900)'",
                                submission_id=f"another-run-{os.getpid()}",
                                metadata={"grpo_ops_run_id": "ray/orphan-not-me"})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPO_OPS_ENABLE_FAULTS": "1"}
    env.pop("RAY_ADDRESS", None)
    sup = subprocess.Popen([sys.executable, "-m", "ops.cli", "run", "--ray-address", ray_two_nodes.address, *FAST,
                            "--exp", "ray/orphan", "--", "++grpo.max_num_steps=500", "++grpo.val_at_start=false",
                            "++fault.slow_step_s=1"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not jobs_of(client, "ray/orphan") or jobs_of(client, "ray/orphan")[0].status.value != "RUNNING":
            assert time.monotonic() < deadline, "the run's job never ran"
            time.sleep(0.5)
        sup.send_signal(signal.SIGKILL)               # the supervisor dies without cleaning up
        sup.wait(timeout=30)
        [job] = jobs_of(client, "ray/orphan")
        assert job.status.value == "RUNNING"          # a Ray job outlives its submitter
        dry = ops(tmp_path, "clean", "ray/orphan", "--dry-run")
        assert dry.returncode == 0 and f"would stop ray job {job.submission_id}" in dry.stdout, dry.stdout + dry.stderr
        p = ops(tmp_path, "clean", "ray/orphan")
        assert p.returncode == 0, p.stderr
        assert f"stopped ray job {job.submission_id}" in p.stdout
        assert f"left alone: ray job {foreign}" in p.stdout
        deadline = time.monotonic() + 60
        while client.get_job_status(job.submission_id).value != "STOPPED":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert client.get_job_status(foreign).value == "RUNNING"
    finally:
        if sup.poll() is None:
            sup.kill()
        client.stop_job(foreign)


def test_oom_killed_rank_in_a_ray_job_is_relaunched_with_a_new_plan(ray_two_nodes, tmp_path):
    """The job's exit (137) and its log (the launcher's cgroup OOM line) are the same evidence as locally: the
    supervisor classifies an OOM and submits the next attempt as a new job with the remedied plan."""
    from ops.cgroup import CgroupUnavailable, detect
    from ray.job_submission import JobSubmissionClient
    try:
        detect()
    except CgroupUnavailable:
        pytest.skip("needs a memory cgroup")
    if os.geteuid() != 0:
        pytest.skip("needs root for rank memory cgroups")
    p = ops(tmp_path, "run", "--ray-address", ray_two_nodes.address, *FAST, "--exp", "ray/oom", "--max-attempts",
            "2", "--", "++grpo.max_num_steps=2", "++grpo.val_at_start=false", "++cluster.cpu_device_memory_mib=700",
            "++fault.alloc_mib=60", "++fault.every_launch=true")
    recs = read_journal(tmp_path / "results" / "ray" / "oom" / "ops" / "journal.jsonl")
    end = kind(recs, "attempt_end")[0]
    assert end["exit"]["code"] == 137 and end["failure"]["kind"] in ("device_oom", "host_oom"), end
    assert "Memory cgroup out of memory" in " ".join(end["failure"]["evidence_lines"])
    dec = kind(recs, "decision")[0]
    assert dec["action"] == "relaunch" and dec["plan_diff"], dec
    (key, (old, new)), = dec["plan_diff"].items()
    jobs = jobs_of(JobSubmissionClient(ray_two_nodes.address), "ray/oom")
    assert [j.metadata["grpo_ops_attempt"] for j in jobs] == ["1", "2"]
    assert f"++{key}={new}" in jobs[1].entrypoint and f"++{key}={new}" not in jobs[0].entrypoint
