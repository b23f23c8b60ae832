"""The Ray job backend's pure parts: exit mapping, entrypoint quoting, forwarded environment, ownership."""

import shlex
import signal
from pathlib import Path

import pytest

from ops.backends.base import Exit
from ops.backends.ray_job import (META_ATTEMPT, META_RUN, JobRow, connect, entrypoint, exit_of, job_env, slug,
                                  split_jobs, submission_id)
from ops.errors import UserError
from training.spec import Launch


@pytest.mark.parametrize("status, code, message, expected", [
    ("PENDING", None, None, None),
    ("RUNNING", None, "Job is currently running.", None),
    ("SUCCEEDED", 0, "Job finished successfully.", Exit(0, None, None, "ray job SUCCEEDED: Job finished successfully.")),
    ("FAILED", 3, "Job entrypoint command failed with exit code 3, last available logs:\nTraceback",
     Exit(3, None, None, "ray job FAILED: Job entrypoint command failed with exit code 3, last available logs:")),
    ("FAILED", -9, "Job entrypoint command failed with exit code -9", Exit(None, 9, None,
                                                                         "ray job FAILED: Job entrypoint command failed with exit code -9")),
    ("STOPPED", None, "Job was intentionally stopped.",
     Exit(None, int(signal.SIGTERM), None, "ray job STOPPED (stop_job): Job was intentionally stopped.")),
    ("FAILED", None, "runtime_env setup failed", Exit(None, None, None,
                                                      "ray job FAILED before its entrypoint ended: runtime_env setup failed")),
])
def test_exit_of_maps_every_status(status, code, message, expected):
    assert exit_of(status, code, message) == expected


def test_exit_of_accepts_the_enum():
    from ray.job_submission import JobStatus
    assert exit_of(JobStatus.SUCCEEDED, 0, "").code == 0
    assert exit_of(JobStatus.RUNNING, None, "") is None


def test_entrypoint_is_the_quoted_argv_in_the_cwd():
    launch = Launch(("/venv/bin/python", "-m", "training.grpo", "++a.b=x y", "$(rm -rf /)"),
                    {"WANDB_API_KEY": "s3cret-value"}, Path("/res/e 1"))
    cmd = entrypoint(launch)
    assert cmd.startswith("cd '/res/e 1' && exec ")
    assert shlex.split(cmd.split(" && exec ", 1)[1]) == list(launch.argv)
    assert "s3cret" not in cmd


def test_job_env_forwards_the_run_env_but_not_the_submitters_ray_session():
    env = job_env({"PATH": "/bin", "HF_TOKEN": "hf_x", "RAY_ADDRESS": "127.0.0.1:1", "RAY_TMPDIR": "/x",
                   "PWD": "/here", "GRPO_OPS_RUN_ID": "r", "RAY_DEDUP_LOGS": "0"}, stop_wait_s=2.5)
    assert env == {"PATH": "/bin", "HF_TOKEN": "hf_x", "GRPO_OPS_RUN_ID": "r", "RAY_DEDUP_LOGS": "0",
                   "RAY_JOB_STOP_WAIT_TIME_S": "3"}


def test_submission_id_names_run_and_attempt_and_is_url_safe():
    sid = submission_id("20261125/embedded/grpo workplace_001", 3, "abc")
    assert sid == "grpo-ops-20261125_embedded_grpo_workplace_001-a3-abc"
    assert slug("///") == "run"


def test_split_jobs_owns_by_metadata_only():
    rows = [JobRow("grpo-ops-e-a1-x", "RUNNING", {META_RUN: "e", META_ATTEMPT: "1"}),
            JobRow("grpo-ops-e-a0-y", "SUCCEEDED", {META_RUN: "e"}),
            JobRow("grpo-ops-e-a2-z", "PENDING", {META_RUN: "e", META_ATTEMPT: "2"}),
            JobRow("grpo-ops-e-a9-lookalike", "RUNNING", {}),           # same prefix, no marker: not ours
            JobRow("someone-else", "RUNNING", {META_RUN: "e2"})]
    mine, others = split_jobs(rows, "e")
    assert [r.submission_id for r in mine] == ["grpo-ops-e-a1-x", "grpo-ops-e-a2-z"]
    assert [r.submission_id for r in others] == ["grpo-ops-e-a9-lookalike", "someone-else"]


@pytest.mark.parametrize("address", ["ray://head:10001", "not a url", ""])
def test_connect_rejects_what_is_not_a_dashboard_url(address):
    with pytest.raises(UserError, match="dashboard URL"):
        connect(address)


def _ops(tmp_path, *args):
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)


@pytest.mark.parametrize("address, says", [("http://127.0.0.1:1", "cannot reach the Ray Jobs API at http://127.0.0.1:1"),
                                           ("ray://head:10001", "is not a dashboard URL")])
def test_ops_run_with_a_bad_ray_address_is_one_line_exit_2(tmp_path, address, says):
    p = _ops(tmp_path, "run", "--ray-address", address, "--skip-preflight", "--exp", "bad")
    assert p.returncode == 2 and says in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr
